package api

import (
	"net/http"
	"strconv"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// tfsDTypes spells our datatypes as TF Serving's DataType enum.
var tfsDTypes = map[tensor.DataType]string{
	tensor.Bool: "DT_BOOL", tensor.Uint8: "DT_UINT8", tensor.Uint16: "DT_UINT16", tensor.Uint32: "DT_UINT32",
	tensor.Uint64: "DT_UINT64", tensor.Int8: "DT_INT8", tensor.Int16: "DT_INT16", tensor.Int32: "DT_INT32",
	tensor.Int64: "DT_INT64", tensor.FP16: "DT_HALF", tensor.FP32: "DT_FLOAT", tensor.FP64: "DT_DOUBLE",
	tensor.Bytes: "DT_STRING",
}

// tfsTensorInfo is TF Serving's TensorInfo in its JSON form: int64 sizes are
// strings, as protobuf's JSON mapping writes them.
type tfsTensorInfo struct {
	DType       string `json:"dtype"`
	TensorShape struct {
		Dim []struct {
			Size string `json:"size"`
			Name string `json:"name"`
		} `json:"dim"`
		UnknownRank bool `json:"unknown_rank"`
	} `json:"tensor_shape"`
	Name string `json:"name"`
}

func tfsTensors(ts []tensor.Info) map[string]tfsTensorInfo {
	out := make(map[string]tfsTensorInfo, len(ts))
	for _, t := range ts {
		var ti tfsTensorInfo
		ti.DType, ti.Name = tfsDTypes[t.DataType], t.Name
		if ti.DType == "" {
			ti.DType = "DT_INVALID"
		}
		for _, d := range t.Shape {
			ti.TensorShape.Dim = append(ti.TensorShape.Dim, struct {
				Size string `json:"size"`
				Name string `json:"name"`
			}{Size: strconv.Itoa(d)})
		}
		out[t.Name] = ti
	}
	return out
}

// tfsMetadata answers TF Serving's GET
// /v1/models/{name}[/versions/{v}]/metadata: the model's one signature,
// serving_default, in the shape TF Serving's GetModelMetadata gives it.
func (s *Server) tfsMetadata(w http.ResponseWriter, rt route) {
	e, err := s.opts.Backend.Lookup(rt.model, rt.version)
	if err != nil {
		writeError(w, StatusFor(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"model_spec": map[string]string{
			"name": e.Name, "signature_name": "", "version": strconv.FormatInt(e.Version, 10),
		},
		"metadata": map[string]any{
			"signature_def": map[string]any{
				"signature_def": map[string]any{
					"serving_default": map[string]any{
						"inputs":      tfsTensors(e.Inputs),
						"outputs":     tfsTensors(e.Outputs),
						"method_name": "tensorflow/serving/predict",
					},
				},
			},
		},
	})
}
