/*
 * Outpost's declaration of the XNNPACK delegate entry points that
 * libtensorflowlite_c.so 2.9.0 (from tfjs-tflite-node@0.0.2) exports; XNNPACK
 * is linked into that library, so no separate delegate library is needed.
 *
 * The options layout (two 32-bit words) matches what
 * TfLiteXNNPackDelegateCreate reads in that build: one 8-byte load.
 */
#ifndef OUTPOST_TFLITE_XNNPACK_DELEGATE_H_
#define OUTPOST_TFLITE_XNNPACK_DELEGATE_H_

#include <stdint.h>

#include "tensorflow/lite/c/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Let XNNPACK run signed (QS8) and unsigned (QU8) 8-bit quantized operators. */
#define TFLITE_XNNPACK_DELEGATE_FLAG_QS8 0x00000001
#define TFLITE_XNNPACK_DELEGATE_FLAG_QU8 0x00000002

typedef struct {
  /* Threads in XNNPACK's own pool; 0 or 1 runs on the calling thread. */
  int32_t num_threads;
  /* Bitwise OR of TFLITE_XNNPACK_DELEGATE_FLAG_* values. */
  uint32_t flags;
} TfLiteXNNPackDelegateOptions;

TFL_CAPI_EXPORT TfLiteXNNPackDelegateOptions TfLiteXNNPackDelegateOptionsDefault(void);

TFL_CAPI_EXPORT TfLiteDelegate* TfLiteXNNPackDelegateCreate(
    const TfLiteXNNPackDelegateOptions* options);

/* Returns the pthreadpool_t the delegate uses, or NULL. */
TFL_CAPI_EXPORT void* TfLiteXNNPackDelegateGetThreadPool(TfLiteDelegate* delegate);

TFL_CAPI_EXPORT void TfLiteXNNPackDelegateDelete(TfLiteDelegate* delegate);

#ifdef __cplusplus
}
#endif

#endif /* OUTPOST_TFLITE_XNNPACK_DELEGATE_H_ */
