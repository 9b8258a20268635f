// A broken plugin for tests: its delegate fails to prepare the graph (as a
// vendor delegate does for an unsupported model).
#include <stdlib.h>
#include "tensorflow/lite/c/common.h"

static TfLiteStatus prepare(TfLiteContext* ctx, TfLiteDelegate* d) {
  ctx->ReportError(ctx, "failing_plugin: cannot prepare this graph");
  return kTfLiteError;
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  TfLiteDelegate* d = (TfLiteDelegate*)calloc(1, sizeof(TfLiteDelegate));
  d->Prepare = prepare;
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* d) { free(d); }
