package runtime

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// DelegateKind names a link of the delegate chain.
type DelegateKind string

const (
	// External loads a TFLite delegate plugin (.so exporting
	// tflite_plugin_create_delegate): Edge TPU, ArmNN, vendor NPUs.
	External DelegateKind = "external"
	// XNNPACK is TFLite's optimized CPU delegate, built into the library.
	XNNPACK DelegateKind = "xnnpack"
	// CPU is TFLite's reference kernels with no delegate, or ONNX Runtime's
	// CPU execution provider.
	CPU DelegateKind = "cpu"
	// CUDA is ONNX Runtime's CUDA execution provider (NVIDIA GPUs, Jetson);
	// Options go to OrtCUDAProviderOptionsV2 ("device_id", ...). TFLite
	// models skip it.
	CUDA DelegateKind = "cuda"
	// TensorRT is ONNX Runtime's TensorRT execution provider (Jetson);
	// Options go to OrtTensorRTProviderOptionsV2 ("trt_fp16_enable", ...).
	// TFLite models skip it.
	TensorRT DelegateKind = "tensorrt"
)

// onnxOnly reports whether the kind is an ONNX Runtime execution provider.
func (k DelegateKind) onnxOnly() bool { return k == CUDA || k == TensorRT }

// DelegateSpec is one link of the fallback chain.
type DelegateSpec struct {
	Kind DelegateKind `json:"kind" yaml:"kind"`
	// Path is the plugin library, for External.
	Path string `json:"path,omitempty" yaml:"path,omitempty"`
	// Options are passed to the plugin as key/value strings, for External.
	Options map[string]string `json:"options,omitempty" yaml:"options,omitempty"`
}

func (s DelegateSpec) String() string {
	if s.Kind == External {
		return fmt.Sprintf("external(%s)", s.Path)
	}
	return string(s.Kind)
}

func (s DelegateSpec) validate() error {
	switch s.Kind {
	case External:
		if s.Path == "" {
			return errors.New("external delegate needs a plugin path")
		}
	case XNNPACK, CPU, CUDA, TensorRT:
	default:
		return fmt.Errorf("unknown delegate kind %q", s.Kind)
	}
	return nil
}

// create makes a fresh delegate instance; each interpreter gets its own.
// Plain CPU has none (nil, nil).
func (s DelegateSpec) create(threads int) (*countedDelegate, error) {
	switch s.Kind {
	case External:
		return newExternal(s.Path, s.Options)
	case XNNPACK:
		return newXNNPACK(threads)
	default:
		return nil, nil
	}
}

// ParseDelegate reads a chain link from its flag form: "xnnpack", "cpu",
// "external:/path/lib.so[,key=value...]", "cuda[:key=value,...]" or
// "tensorrt[:key=value,...]".
func ParseDelegate(s string) (DelegateSpec, error) {
	kind, rest, _ := strings.Cut(s, ":")
	spec := DelegateSpec{Kind: DelegateKind(strings.ToLower(kind))}
	if spec.Kind == External || spec.Kind.onnxOnly() {
		parts := strings.Split(rest, ",")
		if spec.Kind == External {
			spec.Path = parts[0]
			parts = parts[1:]
		} else if rest == "" {
			parts = nil
		}
		for _, kv := range parts {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return DelegateSpec{}, fmt.Errorf("runtime: delegate option %q is not key=value", kv)
			}
			if spec.Options == nil {
				spec.Options = map[string]string{}
			}
			spec.Options[k] = v
		}
	} else if rest != "" {
		return DelegateSpec{}, fmt.Errorf("runtime: delegate %q takes no arguments", kind)
	}
	if err := spec.validate(); err != nil {
		return DelegateSpec{}, fmt.Errorf("runtime: %w", err)
	}
	return spec, nil
}

// DelegateReport says which delegate runs a model and how much of it.
type DelegateReport struct {
	// Delegate is the link that ran: "external(/path)", "xnnpack" or "cpu".
	Delegate string `json:"delegate"`
	// TotalNodes is the number of nodes in the graph before delegation;
	// DelegatedNodes how many the delegate took, in Partitions kernels.
	// All three are 0 for plain CPU.
	TotalNodes     int `json:"total_nodes"`
	DelegatedNodes int `json:"delegated_nodes"`
	Partitions     int `json:"partitions"`
	// Fallbacks lists the links skipped before it, with the reason.
	Fallbacks []Fallback `json:"fallbacks,omitempty"`

	spec DelegateSpec
}

// Fallback is a delegate that was skipped.
type Fallback struct {
	Delegate string `json:"delegate"`
	Reason   string `json:"reason"`
}

// Timing splits one call into waiting for an interpreter and running it.
type Timing struct {
	Queue, Invoke time.Duration
}

var epoch = time.Now()

func nanotime() time.Duration { return time.Since(epoch) }
