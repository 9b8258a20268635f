package registry

import (
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
)

// ModelVersion is one stored, signed model version.
type ModelVersion struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	SHA256  string `json:"sha256"`
	Length  int64  `json:"length"`
	// ChunkSize is how the artifact is served.
	ChunkSize int `json:"chunk_size"`
	// Release is the signed release envelope, sent inside install commands.
	Release []byte    `json:"release"`
	Serial  int64     `json:"serial"`
	Expires time.Time `json:"expires"`
	Created time.Time `json:"created"`
}

// Artifact is how devices fetch the version.
func (m *ModelVersion) Artifact() protocol.Artifact {
	return protocol.Artifact{SHA256: m.SHA256, Length: m.Length, ChunkSize: m.ChunkSize,
		Chunks: protocol.ChunkCount(m.Length, m.ChunkSize)}
}

// DefaultChunkSize is the chunk size of pushed artifacts unless told.
const DefaultChunkSize = 64 << 10

// writeBlob streams model into blobs/<sha256> through manifest.Bytes, so the
// file holds exactly the signed bytes or nothing.
func (r *Registry) writeBlob(m *manifest.Manifest, model io.Reader) error {
	path := r.BlobPath(m.SHA256)
	if st, err := os.Stat(path); err == nil && st.Size() == m.Length {
		// The blob is known; the upload must still be the signed bytes.
		if _, err := io.Copy(io.Discard, m.Bytes(model)); err != nil {
			return fmt.Errorf("registry: upload of %s: %w", m.SHA256[:12], err)
		}
		return nil
	}
	err := atomicfile.Write(path, atomicfile.Options{}, func(w io.Writer) error {
		_, err := io.Copy(w, m.Bytes(model))
		return err
	})
	if err != nil {
		return fmt.Errorf("registry: blob %s: %w", m.SHA256[:12], err)
	}
	return nil
}

// BlobPath is the file of an artifact (which may not exist).
func (r *Registry) BlobPath(sha string) string {
	if len(sha) != 64 {
		sha = "invalid"
	}
	if _, err := hex.DecodeString(sha); err != nil {
		sha = "invalid"
	}
	return filepath.Join(r.dir, "blobs", sha)
}

// PutModel verifies release against root (signatures, expiry, manifest),
// copies model into a blob file checking it against the manifest as it
// goes, and records the version. Pushing the same version with the same
// bytes again is a no-op; other bytes are ErrExists. chunkSize 0 means
// DefaultChunkSize.
func (r *Registry) PutModel(root *trust.Root, release []byte, model io.Reader, chunkSize int, now time.Time) (*ModelVersion, error) {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	if chunkSize > protocol.MaxChunkSize {
		return nil, fmt.Errorf("registry: chunk size %d is over %d", chunkSize, protocol.MaxChunkSize)
	}
	rel, err := root.VerifyRelease(release, now)
	if err != nil {
		return nil, fmt.Errorf("registry: push: %w", err)
	}
	m := &rel.Model
	if old, err := r.Model(m.Name, m.Version); err == nil {
		if old.SHA256 != m.SHA256 {
			return nil, fmt.Errorf("%w: %s v%d with sha256 %s", ErrExists, m.Name, m.Version, old.SHA256)
		}
	}
	if err := r.writeBlob(m, model); err != nil {
		return nil, err
	}
	mv := &ModelVersion{Name: m.Name, Version: m.Version, SHA256: m.SHA256, Length: m.Length, ChunkSize: chunkSize,
		Release: release, Serial: rel.Serial, Expires: rel.Expires, Created: now.UTC()}
	err = r.write(func(tx *sql.Tx) error {
		var sha string
		err := tx.QueryRow(r.q(`SELECT sha256 FROM models WHERE name = ? AND version = ?`+r.eng.forUpdate), m.Name, m.Version).Scan(&sha)
		switch {
		case err == nil && sha != m.SHA256:
			return fmt.Errorf("%w: %s v%d", ErrExists, m.Name, m.Version)
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if err := r.storeBlobPieces(tx, m.SHA256); err != nil {
			return err
		}
		return r.putModel(tx, mv)
	})
	if err != nil {
		return nil, fmt.Errorf("registry: push: %w", err)
	}
	r.log.Info("model stored", "model", m.Name, "version", m.Version, "sha256", m.SHA256, "bytes", m.Length)
	return mv, nil
}

func (r *Registry) putModel(tx *sql.Tx, mv *ModelVersion) error {
	_, err := r.exec(tx, `INSERT INTO models (name, version, sha256, length, chunk_size, release, serial, expires, created)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name, version) DO UPDATE SET sha256 = excluded.sha256, length = excluded.length,
			chunk_size = excluded.chunk_size, release = excluded.release, serial = excluded.serial,
			expires = excluded.expires, created = excluded.created`,
		mv.Name, mv.Version, mv.SHA256, mv.Length, mv.ChunkSize, mv.Release, mv.Serial, ts(mv.Expires), ts(mv.Created))
	return err
}

const modelCols = `name, version, sha256, length, chunk_size, release, serial, expires, created`

func scanModel(s scanner) (*ModelVersion, error) {
	var m ModelVersion
	var expires, created int64
	if err := s.Scan(&m.Name, &m.Version, &m.SHA256, &m.Length, &m.ChunkSize, &m.Release, &m.Serial, &expires, &created); err != nil {
		return nil, notFound(err)
	}
	m.Expires, m.Created = fromTS(expires), fromTS(created)
	return &m, nil
}

// Model returns one version.
func (r *Registry) Model(name string, version int64) (*ModelVersion, error) {
	m, err := scanModel(r.r.QueryRow(r.q(`SELECT `+modelCols+` FROM models WHERE name = ? AND version = ?`), name, version))
	if err != nil {
		return nil, fmt.Errorf("registry: model %s v%d: %w", name, version, err)
	}
	return m, nil
}

// ModelBySHA returns a version whose artifact has digest sha.
func (r *Registry) ModelBySHA(sha string) (*ModelVersion, error) {
	m, err := scanModel(r.r.QueryRow(r.q(`SELECT `+modelCols+` FROM models WHERE sha256 = ? ORDER BY name, version LIMIT 1`), sha))
	if err != nil {
		return nil, fmt.Errorf("registry: artifact %.12s: %w", sha, err)
	}
	return m, nil
}

// Models lists every version, by name then version.
func (r *Registry) Models() ([]ModelVersion, error) {
	out, err := queryAll(r.r, r.q(`SELECT `+modelCols+` FROM models ORDER BY name, version`), nil, scanModel)
	if err != nil {
		return nil, fmt.Errorf("registry: models: %w", err)
	}
	return out, nil
}

// queryAll runs a query and scans every row with scan.
func queryAll[T any](db *sql.DB, query string, args []any, scan func(scanner) (*T, error)) ([]T, error) {
	rows, err := db.Query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, rows.Err()
}
