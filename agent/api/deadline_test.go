package api

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestRequestDeadline(t *testing.T) {
	t.Run("times out once waited on", func(t *testing.T) {
		var d requestDeadline
		d.reset(context.Background(), 20*time.Millisecond)
		defer d.release()
		assert.NoError(t, d.Err())
		select {
		case <-d.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("Done never closed")
		}
		assert.ErrorIs(t, d.Err(), context.DeadlineExceeded)
	})
	t.Run("past its deadline before anything waited", func(t *testing.T) {
		var d requestDeadline
		d.reset(context.Background(), time.Nanosecond)
		defer d.release()
		time.Sleep(time.Millisecond)
		assert.ErrorIs(t, d.Err(), context.DeadlineExceeded)
		<-d.Done()
	})
	t.Run("the request's cancellation passes through", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		var d requestDeadline
		d.reset(parent, time.Hour)
		defer d.release()
		done := d.Done()
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Done never closed")
		}
		assert.ErrorIs(t, d.Err(), context.Canceled)
	})
	t.Run("the earlier deadline and the request's values", func(t *testing.T) {
		type key struct{}
		soon := time.Now().Add(time.Minute)
		parent, cancel := context.WithDeadline(context.WithValue(context.Background(), key{}, "v"), soon)
		defer cancel()
		var d requestDeadline
		d.reset(parent, time.Hour)
		defer d.release()
		got, ok := d.Deadline()
		assert.True(t, ok)
		assert.Equal(t, soon, got)
		d.reset(parent, time.Second)
		got, _ = d.Deadline()
		assert.True(t, got.Before(soon))
		assert.Equal(t, "v", d.Value(key{}))
	})
	t.Run("released before it was armed", func(t *testing.T) {
		var d requestDeadline
		d.reset(context.Background(), time.Hour)
		d.release()
		assert.Nil(t, d.cancel, "no timer was started")
		<-d.Done()
		assert.ErrorIs(t, d.Err(), context.Canceled)
	})
	t.Run("released after it was armed", func(t *testing.T) {
		var d requestDeadline
		d.reset(context.Background(), time.Hour)
		done := d.Done()
		d.release()
		<-done
		assert.ErrorIs(t, d.Err(), context.Canceled)
	})
}
