package runtime

// A bare TFLite C API runner, with none of the pool, checks or go-tflite in
// between: the reference that tests compare outputs against and that the
// benchmark measures the pool's overhead against.

/*
#include <stdlib.h>
#include "tensorflow/lite/c/c_api.h"
#include "tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h"

typedef struct {
	TfLiteModel* model;
	TfLiteDelegate* xnnpack;
	TfLiteInterpreter* it;
} outpost_bare;

static outpost_bare* outpost_bare_new(const char* path, int threads, int use_xnnpack) {
	outpost_bare* b = (outpost_bare*)calloc(1, sizeof(outpost_bare));
	b->model = TfLiteModelCreateFromFile(path);
	if (b->model == NULL) { free(b); return NULL; }
	TfLiteInterpreterOptions* o = TfLiteInterpreterOptionsCreate();
	TfLiteInterpreterOptionsSetNumThreads(o, threads);
	if (use_xnnpack) {
		TfLiteXNNPackDelegateOptions xo = TfLiteXNNPackDelegateOptionsDefault();
		xo.num_threads = threads;
		b->xnnpack = TfLiteXNNPackDelegateCreate(&xo);
		TfLiteInterpreterOptionsAddDelegate(o, b->xnnpack);
	}
	b->it = TfLiteInterpreterCreate(b->model, o);
	TfLiteInterpreterOptionsDelete(o);
	if (b->it == NULL || TfLiteInterpreterAllocateTensors(b->it) != kTfLiteOk) {
		if (b->it) TfLiteInterpreterDelete(b->it);
		if (b->xnnpack) TfLiteXNNPackDelegateDelete(b->xnnpack);
		TfLiteModelDelete(b->model);
		free(b);
		return NULL;
	}
	return b;
}

// outpost_bare_run copies the inputs in, invokes and copies the outputs out.
static int outpost_bare_run(outpost_bare* b, void** in, size_t* in_len, int n_in, void** out, size_t* out_len, int n_out) {
	for (int i = 0; i < n_in; i++) {
		if (TfLiteTensorCopyFromBuffer(TfLiteInterpreterGetInputTensor(b->it, i), in[i], in_len[i]) != kTfLiteOk) return 1;
	}
	if (TfLiteInterpreterInvoke(b->it) != kTfLiteOk) return 2;
	for (int i = 0; i < n_out; i++) {
		if (TfLiteTensorCopyToBuffer(TfLiteInterpreterGetOutputTensor(b->it, i), out[i], out_len[i]) != kTfLiteOk) return 3;
	}
	return 0;
}

static void outpost_bare_free(outpost_bare* b) {
	TfLiteInterpreterDelete(b->it);
	if (b->xnnpack) TfLiteXNNPackDelegateDelete(b->xnnpack);
	TfLiteModelDelete(b->model);
	free(b);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// bareRunner runs a model straight through the C API. It is not safe for
// concurrent use.
type bareRunner struct {
	b             *C.outpost_bare
	inPtr, outPtr *[8]unsafe.Pointer
	inLen, outLen *[8]C.size_t
}

func newBareRunner(path string, threads int, xnnpack bool) (*bareRunner, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	use := C.int(0)
	if xnnpack {
		use = 1
	}
	b := C.outpost_bare_new(cpath, C.int(threads), use)
	if b == nil {
		return nil, fmt.Errorf("bare: cannot load %s", path)
	}
	alloc := func() unsafe.Pointer { return C.calloc(8, 8) }
	return &bareRunner{
		b:      b,
		inPtr:  (*[8]unsafe.Pointer)(alloc()),
		outPtr: (*[8]unsafe.Pointer)(alloc()),
		inLen:  (*[8]C.size_t)(alloc()),
		outLen: (*[8]C.size_t)(alloc()),
	}, nil
}

// run copies in and out through C memory the caller provides (cIn, cOut),
// so no Go pointer crosses into C.
func (r *bareRunner) run(cIn, cOut []cBuf) error {
	if len(cIn) > 8 || len(cOut) > 8 {
		return errors.New("bare: at most 8 tensors each way")
	}
	for i, b := range cIn {
		r.inPtr[i], r.inLen[i] = b.p, C.size_t(b.n)
	}
	for i, b := range cOut {
		r.outPtr[i], r.outLen[i] = b.p, C.size_t(b.n)
	}
	if rc := C.outpost_bare_run(r.b, &r.inPtr[0], &r.inLen[0], C.int(len(cIn)), &r.outPtr[0], &r.outLen[0], C.int(len(cOut))); rc != 0 {
		return fmt.Errorf("bare: run failed at step %d", int(rc))
	}
	return nil
}

func (r *bareRunner) close() {
	C.outpost_bare_free(r.b)
	for _, p := range []unsafe.Pointer{unsafe.Pointer(r.inPtr), unsafe.Pointer(r.outPtr), unsafe.Pointer(r.inLen), unsafe.Pointer(r.outLen)} {
		C.free(p)
	}
}

// cBuf is a buffer in C memory.
type cBuf struct {
	p unsafe.Pointer
	n int
}

func newCBuf(n int) cBuf { return cBuf{p: C.calloc(C.size_t(n), 1), n: n} }

func (b cBuf) bytes() []byte { return unsafe.Slice((*byte)(b.p), b.n) }

func (b cBuf) free() { C.free(b.p) }
