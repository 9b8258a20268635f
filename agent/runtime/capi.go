package runtime

// This file holds the small amount of C that go-tflite v1.0.5 lacks or gets
// wrong for a long-running daemon:
//
//   - TfLiteModelCreate does not copy its buffer, and go-tflite's NewModel
//     hands it a C.CBytes copy it never frees (a leak per load). We own the
//     buffer and free it with the model.
//   - go-tflite's error reporter passes a va_list to asprintf (garbage, or a
//     crash). Ours formats with vsnprintf into a per-interpreter C buffer, so
//     no Go callback runs on the C side at all.
//   - XNNPACK lives inside libtensorflowlite_c.so; go-tflite's xnnpack package
//     links libraries that do not exist in this build.
//   - Delegates are wrapped so we can count the nodes each one claimed.
//   - External delegate plugins are loaded here (same plugin ABI as TFLite's
//     external delegate), so a bad path, missing symbols or a plugin that
//     returns no delegate become errors instead of a crash.

/*
#cgo LDFLAGS: -ltensorflowlite_c -ldl
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tensorflow/lite/c/c_api.h"
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h"

// ---- error capture ----------------------------------------------------------

enum { OUTPOST_ERRBUF = 2048 };

typedef struct {
	char msg[OUTPOST_ERRBUF];
	size_t len;
} outpost_errbuf;

static void outpost_report(void* user, const char* format, va_list args) {
	outpost_errbuf* b = (outpost_errbuf*)user;
	if (b->len + 2 >= OUTPOST_ERRBUF) return;
	if (b->len > 0) b->msg[b->len++] = '\n';
	int n = vsnprintf(b->msg + b->len, OUTPOST_ERRBUF - b->len, format, args);
	if (n < 0) return;
	b->len += (size_t)n;
	if (b->len >= OUTPOST_ERRBUF) b->len = OUTPOST_ERRBUF - 1;
}

static void outpost_set_reporter(TfLiteInterpreterOptions* o, outpost_errbuf* b) {
	TfLiteInterpreterOptionsSetErrorReporter(o, outpost_report, b);
}

// ---- counting wrapper ------------------------------------------------------

// outpost_counted wraps a delegate. Its Prepare runs the inner delegate's
// Prepare and reads the execution plan before and after: the nodes that
// disappeared were claimed by the delegate and replaced by kernels whose
// registration is the DELEGATE builtin.
typedef struct {
	TfLiteDelegate self;
	TfLiteDelegate* inner;
	int total_nodes;
	int delegated_nodes;
	int partitions;
} outpost_counted;

enum { OUTPOST_BUILTIN_DELEGATE = 51 };

// outpost_delegate_kernels counts the delegate kernels in an execution plan.
// (A plugin's delegate may itself wrap another, so the kernels' node->delegate
// need not be the pointer we hold.)
static int outpost_delegate_kernels(TfLiteContext* ctx, TfLiteIntArray* plan) {
	int n = 0;
	for (int i = 0; i < plan->size; i++) {
		TfLiteNode* node = NULL;
		TfLiteRegistration* reg = NULL;
		if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk) continue;
		if (reg != NULL && reg->builtin_code == OUTPOST_BUILTIN_DELEGATE) n++;
	}
	return n;
}

static TfLiteStatus outpost_counted_prepare(TfLiteContext* ctx, TfLiteDelegate* d) {
	outpost_counted* c = (outpost_counted*)d->data_;
	TfLiteIntArray* plan = NULL;
	if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk || plan == NULL) return kTfLiteError;
	int before = plan->size;
	int kernels_before = outpost_delegate_kernels(ctx, plan);
	if (c->inner->Prepare == NULL) return kTfLiteError;
	TfLiteStatus st = c->inner->Prepare(ctx, c->inner);
	if (st != kTfLiteOk) return st;
	if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk || plan == NULL) return kTfLiteError;
	int kernels = outpost_delegate_kernels(ctx, plan) - kernels_before;
	c->total_nodes = before;
	c->partitions = kernels;
	c->delegated_nodes = before - (plan->size - kernels);
	return kTfLiteOk;
}

static outpost_counted* outpost_count(TfLiteDelegate* inner) {
	outpost_counted* c = (outpost_counted*)calloc(1, sizeof(outpost_counted));
	if (c == NULL) return NULL;
	c->inner = inner;
	c->self.data_ = c;
	c->self.Prepare = outpost_counted_prepare;
	c->self.flags = inner->flags;
	return c;
}

// ---- XNNPACK ---------------------------------------------------------------

static TfLiteDelegate* outpost_xnnpack_create(int threads) {
	TfLiteXNNPackDelegateOptions o = TfLiteXNNPackDelegateOptionsDefault();
	o.num_threads = threads;
	o.flags |= TFLITE_XNNPACK_DELEGATE_FLAG_QS8 | TFLITE_XNNPACK_DELEGATE_FLAG_QU8;
	return TfLiteXNNPackDelegateCreate(&o);
}

// ---- external delegate plugins ---------------------------------------------

// Plugins follow TFLite's external delegate ABI: a shared library exporting
// tflite_plugin_create_delegate and tflite_plugin_destroy_delegate. We load
// them ourselves rather than through TfLiteExternalDelegateCreate because the
// 2.9 wrapper dereferences the plugin's delegate without checking it, so a
// plugin that returns NULL (no accelerator attached) crashes the process.

typedef TfLiteDelegate* (*outpost_plugin_create_fn)(char**, char**, size_t, void (*)(const char*));
typedef void (*outpost_plugin_destroy_fn)(TfLiteDelegate*);

typedef struct {
	void* handle;
	outpost_plugin_destroy_fn destroy;
	TfLiteDelegate* delegate;
} outpost_plugin;

// The plugin reports errors through a callback without user data; creation
// runs on the calling thread, so a thread-local buffer collects them.
static __thread char outpost_plugin_err[512];

static void outpost_plugin_report(const char* msg) {
	size_t used = strlen(outpost_plugin_err);
	if (used > 0 && used + 2 < sizeof(outpost_plugin_err)) {
		strcat(outpost_plugin_err, "; ");
		used += 2;
	}
	snprintf(outpost_plugin_err + used, sizeof(outpost_plugin_err) - used, "%s", msg ? msg : "");
}

// outpost_plugin_open returns NULL and sets *err (malloc'd) on failure.
static outpost_plugin* outpost_plugin_open(const char* path, char** keys, char** values, size_t n, char** err) {
	outpost_plugin_err[0] = 0;
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char* e = dlerror();
		*err = strdup(e ? e : "dlopen failed");
		return NULL;
	}
	outpost_plugin_create_fn create = (outpost_plugin_create_fn)dlsym(h, "tflite_plugin_create_delegate");
	outpost_plugin_destroy_fn destroy = (outpost_plugin_destroy_fn)dlsym(h, "tflite_plugin_destroy_delegate");
	if (create == NULL || destroy == NULL) {
		*err = strdup(create == NULL ? "plugin does not export tflite_plugin_create_delegate"
		                             : "plugin does not export tflite_plugin_destroy_delegate");
		dlclose(h);
		return NULL;
	}
	TfLiteDelegate* d = create(keys, values, n, outpost_plugin_report);
	if (d == NULL) {
		char buf[600];
		snprintf(buf, sizeof(buf), "plugin returned no delegate%s%s",
		         outpost_plugin_err[0] ? ": " : "", outpost_plugin_err);
		*err = strdup(buf);
		dlclose(h);
		return NULL;
	}
	outpost_plugin* p = (outpost_plugin*)calloc(1, sizeof(outpost_plugin));
	p->handle = h;
	p->destroy = destroy;
	p->delegate = d;
	return p;
}

static void outpost_plugin_close(outpost_plugin* p) {
	p->destroy(p->delegate);
	dlclose(p->handle);
	free(p);
}
*/
import "C"

import (
	"errors"
	"strings"
	"unsafe"

	tflite "github.com/mattn/go-tflite"
)

// cModel is a TfLiteModel together with the buffer it reads from, which
// TFLite does not copy and which must outlive the model.
type cModel struct {
	m   *C.TfLiteModel
	buf unsafe.Pointer
}

var errNotFlatbuffer = errors.New("not a TFLite flatbuffer")

// newCModel copies data to C memory and builds a TFLite model from it. The
// flatbuffer is verified by TFLite before any of it is used.
func newCModel(data []byte) (*cModel, error) {
	if len(data) < 8 || string(data[4:8]) != "TFL3" {
		return nil, errNotFlatbuffer
	}
	buf := C.CBytes(data)
	m := C.TfLiteModelCreate(buf, C.size_t(len(data)))
	if m == nil {
		C.free(buf)
		return nil, errors.New("flatbuffer verification failed (truncated or corrupt model)")
	}
	return &cModel{m: m, buf: buf}, nil
}

func (m *cModel) free() {
	if m == nil || m.m == nil {
		return
	}
	C.TfLiteModelDelete(m.m)
	C.free(m.buf)
	m.m, m.buf = nil, nil
}

// goModel presents the model to go-tflite. tflite.Model holds exactly one
// *C.TfLiteModel (v1.0.5, pinned), so a struct of the same layout converts;
// TestGoTFLiteLayout guards the assumption.
func (m *cModel) goModel() *tflite.Model {
	type layout struct{ m *C.TfLiteModel }
	return (*tflite.Model)(unsafe.Pointer(&layout{m.m}))
}

// optionsPtr reaches the C options inside go-tflite's InterpreterOptions, which
// holds exactly one *C.TfLiteInterpreterOptions.
func optionsPtr(o *tflite.InterpreterOptions) *C.TfLiteInterpreterOptions {
	type layout struct{ o *C.TfLiteInterpreterOptions }
	return (*layout)(unsafe.Pointer(o)).o
}

// errBuf collects TFLite's error reports for one interpreter.
type errBuf struct{ b *C.outpost_errbuf }

func newErrBuf() errBuf {
	return errBuf{b: (*C.outpost_errbuf)(C.calloc(1, C.sizeof_outpost_errbuf))}
}

func (e errBuf) attach(o *tflite.InterpreterOptions) { C.outpost_set_reporter(optionsPtr(o), e.b) }

// take returns and clears what was reported.
func (e errBuf) take() string {
	if e.b == nil || e.b.len == 0 {
		return ""
	}
	s := C.GoStringN(&e.b.msg[0], C.int(e.b.len))
	e.b.len = 0
	return strings.TrimSpace(s)
}

func (e errBuf) free() { C.free(unsafe.Pointer(e.b)) }

// countedDelegate wraps a created delegate; it satisfies go-tflite's
// delegates.Delegater so it can be added to interpreter options.
type countedDelegate struct {
	c       *C.outpost_counted
	destroy func(*C.TfLiteDelegate)
}

func newCounted(inner *C.TfLiteDelegate, destroy func(*C.TfLiteDelegate)) (*countedDelegate, error) {
	c := C.outpost_count(inner)
	if c == nil {
		destroy(inner)
		return nil, errors.New("out of memory")
	}
	return &countedDelegate{c: c, destroy: destroy}, nil
}

// Ptr is the wrapper the interpreter sees.
func (d *countedDelegate) Ptr() unsafe.Pointer { return unsafe.Pointer(&d.c.self) }

// Delete frees the inner delegate and the wrapper; call it only after the
// interpreter that uses it is deleted.
func (d *countedDelegate) Delete() {
	if d == nil || d.c == nil {
		return
	}
	d.destroy(d.c.inner)
	C.free(unsafe.Pointer(d.c))
	d.c = nil
}

// counts reports what the last Prepare saw: nodes in the graph, nodes the
// delegate took, and the delegate kernels (partitions) they became.
func (d *countedDelegate) counts() (total, delegated, partitions int) {
	return int(d.c.total_nodes), int(d.c.delegated_nodes), int(d.c.partitions)
}

func newXNNPACK(threads int) (*countedDelegate, error) {
	d := C.outpost_xnnpack_create(C.int(threads))
	if d == nil {
		return nil, errors.New("TfLiteXNNPackDelegateCreate returned NULL")
	}
	return newCounted(d, func(p *C.TfLiteDelegate) { C.TfLiteXNNPackDelegateDelete(p) })
}

// newExternal loads a delegate plugin and creates its delegate with opts.
func newExternal(path string, opts map[string]string) (*countedDelegate, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	n := len(opts)
	ptrs := C.calloc(C.size_t(2*n+2), C.size_t(unsafe.Sizeof(uintptr(0))))
	defer C.free(ptrs)
	all := unsafe.Slice((**C.char)(ptrs), 2*n+2)
	keys, vals := all[:n+1], all[n+1:]
	i := 0
	for k, v := range opts {
		keys[i], vals[i] = C.CString(k), C.CString(v)
		i++
	}
	defer func() {
		for j := 0; j < n; j++ {
			C.free(unsafe.Pointer(keys[j]))
			C.free(unsafe.Pointer(vals[j]))
		}
	}()
	var cerr *C.char
	p := C.outpost_plugin_open(cpath, &keys[0], &vals[0], C.size_t(n), &cerr)
	if p == nil {
		defer C.free(unsafe.Pointer(cerr))
		return nil, errors.New(C.GoString(cerr))
	}
	return newCounted(p.delegate, func(*C.TfLiteDelegate) { C.outpost_plugin_close(p) })
}

// tfliteVersion is the version string the library reports.
func tfliteVersion() string { return C.GoString(C.TfLiteVersion()) }
