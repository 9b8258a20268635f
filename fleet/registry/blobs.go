package registry

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/outpost-edge/outpost/internal/atomicfile"
)

// Blobs of replicas. Every replica serves artifact chunks, but a model is
// pushed to one of them, into its data directory. On PostgreSQL the
// artifact is therefore also stored in the database, in pieces of
// blobPiece bytes (table blob_chunks, written in the transaction that
// records the model version), and a replica that lacks the file fetches it
// from there on first use (Blob) and keeps it: the chunk server reads
// files, at any offset, and the database is read once per artifact and
// replica, not once per chunk request. SQLite's one process has the file.

// blobPiece is the size of a stored piece of an artifact.
const blobPiece = 1 << 20

// storeBlobPieces copies the blob file of sha into blob_chunks, unless its
// pieces are already there (PostgreSQL only).
func (r *Registry) storeBlobPieces(tx *sql.Tx, sha string) error {
	if r.eng.name != "postgres" {
		return nil
	}
	var n int
	if err := tx.QueryRow(r.q(`SELECT count(*) FROM blob_chunks WHERE sha256 = ?`), sha).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	f, err := os.Open(r.BlobPath(sha))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, blobPiece)
	for i := 0; ; i++ {
		k, err := io.ReadFull(f, buf)
		if k > 0 {
			if _, err := r.exec(tx, `INSERT INTO blob_chunks (sha256, idx, data) VALUES (?, ?, ?) ON CONFLICT (sha256, idx) DO NOTHING`, sha, i, buf[:k]); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Blob returns the artifact file of the stored model version mv, first
// fetching it from the database when this replica does not have it
// (PostgreSQL). The file is checked against mv's sha256 as it is written.
func (r *Registry) Blob(mv *ModelVersion) (string, error) {
	sha := mv.SHA256
	path := r.BlobPath(sha)
	if st, err := os.Stat(path); err == nil && st.Size() == mv.Length {
		return path, nil
	}
	if r.eng.name != "postgres" {
		return "", fmt.Errorf("registry: blob %.12s: %w", sha, ErrNotFound)
	}
	err := atomicfile.Write(path, atomicfile.Options{}, func(w io.Writer) error {
		rows, err := r.r.Query(r.q(`SELECT data FROM blob_chunks WHERE sha256 = ? ORDER BY idx`), sha)
		if err != nil {
			return err
		}
		defer rows.Close()
		h := sha256.New()
		var n int64
		for rows.Next() {
			var b []byte
			if err := rows.Scan(&b); err != nil {
				return err
			}
			h.Write(b)
			n += int64(len(b))
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if n != mv.Length || hex.EncodeToString(h.Sum(nil)) != sha {
			return fmt.Errorf("stored pieces make %d bytes that do not match: %w", n, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("registry: blob %.12s: %w", sha, err)
	}
	r.log.Info("artifact fetched from the store", "sha256", sha, "bytes", mv.Length)
	return path, nil
}
