package admin

import (
	"encoding/json"
	"net/http/httptest"
	"slices"
	"testing"
)

// TestEnrollBrokers: an enrolment answer names the controller's broker,
// and for a clustered broker every node in order, the first as Broker; a
// single broker has no list, as in a bundle.
func TestEnrollBrokers(t *testing.T) {
	for _, tt := range []struct {
		name        string
		broker      string
		more        []string
		wantBrokers []string
	}{
		{"one broker", "tcp://a.example:1883", nil, nil},
		{"a cluster", "tcp://a.example:1883", []string{"tcp://b.example:1883", "ssl://c.example:8883"},
			[]string{"tcp://a.example:1883", "tcp://b.example:1883", "ssl://c.example:8883"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t)
			s.opts.Broker, s.opts.Brokers = tt.broker, tt.more
			req := httptest.NewRequest("POST", "/v1/devices/gw-1/credential", nil)
			req.RemoteAddr = "127.0.0.1:5000"
			w := httptest.NewRecorder()
			s.Handler().ServeHTTP(w, req)
			if w.Code != 201 {
				t.Fatalf("enrol: got %d (%s), want 201", w.Code, w.Body)
			}
			var cred Credential
			if err := json.Unmarshal(w.Body.Bytes(), &cred); err != nil {
				t.Fatal(err)
			}
			if cred.Broker != tt.broker || !slices.Equal(cred.Brokers, tt.wantBrokers) {
				t.Fatalf("got broker %q, brokers %q; want %q, %q", cred.Broker, cred.Brokers, tt.broker, tt.wantBrokers)
			}
		})
	}
}
