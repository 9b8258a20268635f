// A delegate plugin for tests: it hands back TFLite's own XNNPACK delegate,
// the way an Edge TPU or NPU plugin hands back its vendor delegate. Option
// "num_threads" sets XNNPACK's thread count.
#include <stdlib.h>
#include <string.h>
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h"

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  TfLiteXNNPackDelegateOptions o = TfLiteXNNPackDelegateOptionsDefault();
  o.num_threads = 1;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "num_threads") == 0) {
      o.num_threads = atoi(values[i]);
    } else if (report_error) {
      report_error("xnnpack_plugin: unknown option");
      return NULL;
    }
  }
  return TfLiteXNNPackDelegateCreate(&o);
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* d) { TfLiteXNNPackDelegateDelete(d); }
