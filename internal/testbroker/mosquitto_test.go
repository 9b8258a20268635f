package testbroker

import (
	"testing"
	"time"
)

// TestMosquittoSlowSubscriber: with the shipped configuration a subscriber
// that stops reading while publishers send it a backlog (every publish
// acknowledged by the broker) gets all of it once it reads again. With
// Mosquitto's default queue bound the same run loses messages, which shows
// that the check can fail.
func TestMosquittoSlowSubscriber(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		lossy       bool
	}{
		{"shipped config", "", false},
		{"mosquitto defaults", "max_queued_messages 1000\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := StartMosquitto(t, tc.extra)
			const pubs, msgs = 4, 5000
			res := SlowSubscriber(t, m.URL(), SlowOptions{Publishers: pubs, Messages: msgs,
				Held: func(acked int) bool { return acked == pubs*msgs }})
			t.Logf("%d messages (200 bytes each) to a subscriber that stopped reading: %d acknowledged, %d received, %d lost, %d duplicates; held after %v, done after %v",
				res.Sent, res.Acked, res.Received, res.Lost(), res.Duplicates, res.Held.Round(time.Millisecond), res.Elapsed.Round(time.Millisecond))
			if tc.lossy {
				if res.Lost() == 0 {
					t.Fatal("nothing lost with the default queue bound: the run no longer exceeds it")
				}
				return
			}
			if res.Lost() != 0 {
				t.Errorf("got %d of %d acknowledged messages at the subscriber, want all", res.Received, res.Acked)
			}
		})
	}
}
