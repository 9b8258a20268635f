package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/tensor"
)

func (s *Server) serverMetadata(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]any{
		"name":       "outpost",
		"version":    s.opts.Version,
		"extensions": []string{"binary_tensor_data", "model_repository"},
	})
}

// serverReady is 200 once the daemon has loaded its models and until it
// starts draining, 503 otherwise.
func (s *Server) serverReady(w http.ResponseWriter) {
	if !s.ready.Load() || s.draining.Load() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]bool{"ready": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ready": true})
}

// v2Tensor is a tensor in model metadata.
type v2Tensor struct {
	Name         string               `json:"name"`
	Datatype     tensor.DataType      `json:"datatype"`
	Shape        []int                `json:"shape"`
	Quantization *tensor.Quantization `json:"quantization,omitempty"`
}

func v2Tensors(ts []tensor.Info) []v2Tensor {
	out := make([]v2Tensor, len(ts))
	for i, t := range ts {
		out[i] = v2Tensor{Name: t.Name, Datatype: t.DataType, Shape: t.Shape, Quantization: t.Quantization}
	}
	return out
}

// platform names the runtime as KServe and Triton do.
// Platform is the model metadata's platform of a served model, for both
// transports.
func Platform(e catalog.Entry) string {
	if e.Runtime == "onnx" {
		return "onnxruntime_onnx"
	}
	return "tensorflow_lite"
}

func (s *Server) modelMetadata(w http.ResponseWriter, rt route) {
	e, err := s.opts.Backend.Lookup(rt.model, rt.version)
	if err != nil {
		writeError(w, StatusFor(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"name":     e.Name,
		"versions": []string{strconv.FormatInt(e.Version, 10)},
		"platform": Platform(e),
		"inputs":   v2Tensors(e.Inputs),
		"outputs":  v2Tensors(e.Outputs),
		"parameters": map[string]any{
			"model_version":   strconv.FormatInt(e.Version, 10),
			"model_digest":    e.Digest,
			"delegate":        e.Delegate,
			"delegated_nodes": e.DelegatedNodes,
			"total_nodes":     e.TotalNodes,
			"workers":         e.Workers,
		},
	})
}

func (s *Server) modelReady(w http.ResponseWriter, rt route) {
	e, err := s.opts.Backend.Lookup(rt.model, rt.version)
	if err != nil {
		writeError(w, StatusFor(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": e.Name, "version": strconv.FormatInt(e.Version, 10), "ready": true})
}

// tfsStatus answers TF Serving's GET /v1/models/{name}[/versions/{v}].
func (s *Server) tfsStatus(w http.ResponseWriter, rt route) {
	e, err := s.opts.Backend.Lookup(rt.model, rt.version)
	if err != nil {
		writeError(w, StatusFor(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"model_version_status": []map[string]any{{
			"version": strconv.FormatInt(e.Version, 10),
			"state":   "AVAILABLE",
			"status":  map[string]string{"error_code": "OK", "error_message": ""},
		}},
	})
}

func (s *Server) agentStatus(w http.ResponseWriter) {
	models := s.opts.Backend.List()
	if models == nil {
		models = []catalog.Entry{}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"version":        s.opts.Version,
		"started_at":     s.started.UTC().Format(time.RFC3339),
		"uptime_seconds": int64(time.Since(s.started).Seconds()),
		"ready":          s.ready.Load() && !s.draining.Load(),
		"listen":         s.Addr().String(),
		"models":         models,
	})
}

// repository implements Triton's model repository extension for reloads:
// POST /v2/repository/index, /v2/repository/models/{name}/load|unload.
func (s *Server) repository(w http.ResponseWriter, r *http.Request, rt route) {
	if rt.kind == "repo-index" {
		out := []map[string]string{}
		for _, e := range s.opts.Backend.List() {
			out = append(out, map[string]string{"name": e.Name, "version": strconv.FormatInt(e.Version, 10), "state": "READY"})
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	if s.opts.Reloader == nil {
		writeError(w, http.StatusNotImplemented, "model reload is not available in this mode")
		return
	}
	var err error
	if rt.kind == "repo-load" {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
		defer cancel()
		err = s.opts.Reloader.Reload(ctx, rt.model)
	} else {
		err = s.opts.Reloader.Unload(rt.model)
	}
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]string{"name": rt.model, "result": rt.kind[len("repo-"):] + "ed"})
	case errors.Is(err, catalog.ErrModelNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		writeError(w, http.StatusBadRequest, err.Error())
	}
}
