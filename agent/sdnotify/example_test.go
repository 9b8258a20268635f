package sdnotify_test

import (
	"context"
	"log/slog"
	"time"

	"github.com/outpost-edge/outpost/agent/sdnotify"
)

// A daemon tells systemd it is ready once its listener is up, pings the
// watchdog from its main loop at half the interval, and says it is stopping
// when its context ends.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)

	// ... listener up ...
	if err := sdnotify.Ready(); err != nil {
		log.Warn("sd_notify READY", "err", err)
	}
	interval, err := sdnotify.WatchdogInterval()
	if err != nil {
		log.Warn("watchdog", "err", err)
	}
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-tick:
			sdnotify.Watchdog()
		case <-ctx.Done():
			sdnotify.Stopping()
			// ... drain and shut down within a deadline ...
			return
		}
	}
}
