package daemon

import (
	"strings"
	"sync"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/profile"
)

// references finds the reference profile of the model instance that served a
// request: the one in the signed manifest of the store's current or previous
// entry of that name with the instance's digest, or else of the update
// under way (a candidate on trial, which the store does not hold yet). A
// model served from a configured file, or whose manifest has no reference,
// has none. What it
// finds (or that there is nothing) is kept per digest, so the store is read
// once per model version. Safe for concurrent use.
type references struct {
	st *store.Store // nil: nothing has a reference
	// staged, if set, returns the manifest of the update under way whose
	// model has that sha256 (updater.StagedManifest); set before Run.
	staged func(sha string) (*manifest.Manifest, bool)

	mu       sync.RWMutex          // guards byDigest
	byDigest map[string]*reference // nil value: no reference
}

// reference is one model version's profile, its extractor and the buffers
// requests borrow to compute their features without allocating.
type reference struct {
	p    *profile.Profile
	x    *profile.Extractor
	bufs sync.Pool // of *featureBuf
}

type featureBuf struct {
	ins, outs [][]byte
	vals      []float64
}

func newReferences(st *store.Store) *references {
	return &references{st: st, byDigest: map[string]*reference{}}
}

// lookup returns the reference of e, or nil.
func (r *references) lookup(e catalog.Entry) *reference {
	if r == nil || e.Digest == "" {
		return nil
	}
	r.mu.RLock()
	ref, ok := r.byDigest[e.Digest]
	r.mu.RUnlock()
	if ok || (r.st == nil && r.staged == nil) {
		return ref
	}
	ref = r.find(e)
	r.mu.Lock()
	if len(r.byDigest) > 64 { // models come and go: forget the old ones
		clear(r.byDigest)
	}
	r.byDigest[e.Digest] = ref
	r.mu.Unlock()
	return ref
}

func (r *references) find(e catalog.Entry) *reference {
	hex := strings.TrimPrefix(e.Digest, "sha256:")
	for _, get := range r.stored() {
		se, err := get(e.Name)
		if err != nil || se.Manifest.SHA256 != hex {
			continue
		}
		return newReference(&se.Manifest, e)
	}
	if r.staged != nil {
		if m, ok := r.staged(hex); ok && m.Name == e.Name {
			return newReference(m, e)
		}
	}
	return nil
}

// stored lists where the store keeps manifests: none without a store.
func (r *references) stored() []func(string) (store.Entry, error) {
	if r.st == nil {
		return nil
	}
	return []func(string) (store.Entry, error){r.st.Current, r.st.Previous}
}

// newReference is m's reference for instance e, nil when it has none.
func newReference(m *manifest.Manifest, e catalog.Entry) *reference {
	if m.Reference == nil || !sameOrder(m.Inputs, e.Inputs) || !sameOrder(m.Outputs, e.Outputs) {
		return nil // the features follow the manifest's tensor order
	}
	x, err := m.Extractor()
	if err != nil || x.Len() != len(m.Reference.Features) {
		return nil // a verified manifest has matching features
	}
	ref := &reference{p: m.Reference, x: x}
	ref.bufs.New = func() any { return &featureBuf{vals: make([]float64, x.Len())} }
	return ref
}

// sameOrder reports whether the runtime serves the manifest's tensors in
// the manifest's order.
func sameOrder(ms []manifest.Tensor, ts []tensor.Info) bool {
	if len(ms) != len(ts) {
		return false
	}
	for i := range ms {
		if ms[i].Name != ts[i].Name {
			return false
		}
	}
	return true
}

// features computes a request's features into a borrowed buffer and calls
// use with them; the buffer goes back when use returns. It reports false
// (and does not call use) when the tensors do not fit the signature.
func (ref *reference) features(ins, outs []tensor.Tensor, use func(vals []float64)) bool {
	b := ref.bufs.Get().(*featureBuf)
	defer ref.bufs.Put(b)
	b.ins, b.outs = b.ins[:0], b.outs[:0]
	for i := range ins {
		b.ins = append(b.ins, ins[i].Data)
	}
	for i := range outs {
		b.outs = append(b.outs, outs[i].Data)
	}
	err := ref.x.Extract(b.ins, b.outs, b.vals)
	clear(b.ins)
	clear(b.outs) // keep no request's bytes alive in the pool
	if err != nil {
		return false
	}
	use(b.vals)
	return true
}
