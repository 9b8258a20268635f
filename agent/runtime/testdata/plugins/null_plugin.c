// A broken plugin for tests: it exports both entry points but cannot create
// a delegate (as when the accelerator is unplugged).
#include <stddef.h>
#include "tensorflow/lite/c/common.h"

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  if (report_error) report_error("null_plugin: no accelerator found");
  return NULL;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* d) {}
