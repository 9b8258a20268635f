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
	"fmt"
	"unsafe"
)

// Baseline runs a model straight through the TFLite C API, with none of this
// package's pool, checks or go-tflite in between: the reference that tests
// compare outputs against and benchmarks measure overhead against. Inputs
// and outputs live in C memory, so Run is a single cgo call. Not safe for
// concurrent use.
type Baseline struct {
	b         *C.outpost_bare
	in, out   []cBuf
	ptrs      unsafe.Pointer // C arrays: in pointers, in sizes, out pointers, out sizes
	nIn, nOut int
}

// NewBaseline loads path with threads and, if xnnpack, the XNNPACK delegate.
func NewBaseline(path string, threads int, xnnpack bool) (*Baseline, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	use := C.int(0)
	if xnnpack {
		use = 1
	}
	b := C.outpost_bare_new(cpath, C.int(threads), use)
	if b == nil {
		return nil, fmt.Errorf("runtime: baseline: cannot load %s", path)
	}
	r := &Baseline{b: b, nIn: int(C.TfLiteInterpreterGetInputTensorCount(b.it)), nOut: int(C.TfLiteInterpreterGetOutputTensorCount(b.it))}
	for i := 0; i < r.nIn; i++ {
		r.in = append(r.in, newCBuf(int(C.TfLiteTensorByteSize(C.TfLiteInterpreterGetInputTensor(b.it, C.int32_t(i))))))
	}
	for i := 0; i < r.nOut; i++ {
		r.out = append(r.out, newCBuf(int(C.TfLiteTensorByteSize(C.TfLiteInterpreterGetOutputTensor(b.it, C.int32_t(i))))))
	}
	n := r.nIn + r.nOut
	r.ptrs = C.calloc(C.size_t(2*n), 8)
	ptrs := unsafe.Slice((*unsafe.Pointer)(r.ptrs), n)
	sizes := unsafe.Slice((*C.size_t)(unsafe.Add(r.ptrs, 8*n)), n)
	for i, cb := range append(append([]cBuf(nil), r.in...), r.out...) {
		ptrs[i], sizes[i] = cb.p, C.size_t(cb.n)
	}
	return r, nil
}

// SetInput copies data into input i's C buffer; it must be the tensor's size.
func (r *Baseline) SetInput(i int, data []byte) error {
	if i >= len(r.in) || len(data) != r.in[i].n {
		return fmt.Errorf("runtime: baseline: input %d: %d bytes, want %d", i, len(data), r.in[i].n)
	}
	copy(r.in[i].bytes(), data)
	return nil
}

// Run copies the inputs into the interpreter, invokes it and copies the
// outputs out, all in C.
func (r *Baseline) Run() error {
	n := r.nIn + r.nOut
	ptrs := (*unsafe.Pointer)(r.ptrs)
	sizes := (*C.size_t)(unsafe.Add(r.ptrs, 8*n))
	outPtrs := (*unsafe.Pointer)(unsafe.Add(r.ptrs, 8*r.nIn))
	outSizes := (*C.size_t)(unsafe.Add(r.ptrs, 8*(n+r.nIn)))
	if rc := C.outpost_bare_run(r.b, ptrs, sizes, C.int(r.nIn), outPtrs, outSizes, C.int(r.nOut)); rc != 0 {
		return fmt.Errorf("runtime: baseline: run failed at step %d", int(rc))
	}
	return nil
}

// Output is a view of output i's C buffer, overwritten by the next Run.
func (r *Baseline) Output(i int) []byte { return r.out[i].bytes() }

// Close frees everything.
func (r *Baseline) Close() {
	C.outpost_bare_free(r.b)
	for _, b := range append(r.in, r.out...) {
		b.free()
	}
	C.free(r.ptrs)
}

// cBuf is a buffer in C memory.
type cBuf struct {
	p unsafe.Pointer
	n int
}

func newCBuf(n int) cBuf { return cBuf{p: C.calloc(C.size_t(max(n, 1)), 1), n: n} }

func (b cBuf) bytes() []byte { return unsafe.Slice((*byte)(b.p), b.n) }

func (b cBuf) free() { C.free(b.p) }
