// ortref runs Silero VAD v5 through the ONNX Runtime C API and nothing else:
// the independent reference the Go path is compared with. It reads FRAMES
// frames of 512 float32 samples (16 kHz) from stdin, runs them in order
// feeding the state output back as the next state input, and writes for each
// frame the speech probability (1 float32) then the new state (256 float32)
// to stdout. One intra-op thread, default optimizations, CPU.
//
//   ortref MODEL.onnx FRAMES < frames.f32 > out.f32

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "onnxruntime_c_api.h"

static const OrtApi* api;

static void check(OrtStatus* st, const char* what) {
	if (st == NULL) return;
	fprintf(stderr, "ortref: %s: %s\n", what, api->GetErrorMessage(st));
	api->ReleaseStatus(st);
	exit(2);
}

int main(int argc, char** argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: ortref MODEL.onnx FRAMES\n");
		return 1;
	}
	int frames = atoi(argv[2]);
	api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
	if (api == NULL) {
		fprintf(stderr, "ortref: the library does not serve API version %d\n", ORT_API_VERSION);
		return 2;
	}
	OrtEnv* env;
	check(api->CreateEnv(ORT_LOGGING_LEVEL_FATAL, "ortref", &env), "env");
	OrtSessionOptions* so;
	check(api->CreateSessionOptions(&so), "options");
	check(api->SetIntraOpNumThreads(so, 1), "intra-op threads");
	check(api->SetInterOpNumThreads(so, 1), "inter-op threads");
	OrtSession* sess;
	check(api->CreateSession(env, argv[1], so, &sess), "session");
	OrtMemoryInfo* mi;
	check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mi), "memory info");

	float input[512];
	float state[2 * 1 * 128];
	float prob[1];
	float state_out[2 * 1 * 128];
	int64_t sr = 16000;
	int64_t in_shape[] = {1, 512}, st_shape[] = {2, 1, 128}, prob_shape[] = {1, 1};
	memset(state, 0, sizeof(state));
	const char* in_names[] = {"input", "state", "sr"};
	const char* out_names[] = {"output", "stateN"};
	for (int f = 0; f < frames; f++) {
		if (fread(input, sizeof(float), 512, stdin) != 512) {
			fprintf(stderr, "ortref: short input at frame %d\n", f);
			return 3;
		}
		OrtValue* ins[3] = {0};
		OrtValue* outs[2] = {0};
		check(api->CreateTensorWithDataAsOrtValue(mi, input, sizeof(input), in_shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &ins[0]), "input");
		check(api->CreateTensorWithDataAsOrtValue(mi, state, sizeof(state), st_shape, 3, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &ins[1]), "state");
		check(api->CreateTensorWithDataAsOrtValue(mi, &sr, sizeof(sr), NULL, 0, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, &ins[2]), "sr");
		check(api->CreateTensorWithDataAsOrtValue(mi, prob, sizeof(prob), prob_shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &outs[0]), "output");
		check(api->CreateTensorWithDataAsOrtValue(mi, state_out, sizeof(state_out), st_shape, 3, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &outs[1]), "stateN");
		check(api->Run(sess, NULL, in_names, (const OrtValue* const*)ins, 3, out_names, 2, outs), "run");
		fwrite(prob, sizeof(float), 1, stdout);
		fwrite(state_out, sizeof(float), 256, stdout);
		memcpy(state, state_out, sizeof(state));
		for (int i = 0; i < 3; i++) api->ReleaseValue(ins[i]);
		for (int i = 0; i < 2; i++) api->ReleaseValue(outs[i]);
	}
	api->ReleaseMemoryInfo(mi);
	api->ReleaseSession(sess);
	api->ReleaseSessionOptions(so);
	api->ReleaseEnv(env);
	return 0;
}
