package tensor

import (
	"errors"
	"testing"
)

func TestParseDataType(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want DataType
		ok   bool
	}{
		{"FP32", FP32, true},
		{"fp32", FP32, true},
		{"uint8", Uint8, true},
		{"BYTES", Bytes, true},
		{"FLOAT", Invalid, false},
		{"", Invalid, false},
	} {
		got, err := ParseDataType(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseDataType(%q) = %q, %v; want %q, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestByteSize(t *testing.T) {
	for _, tc := range []struct {
		info Info
		want int
		err  bool
	}{
		{Info{DataType: FP32, Shape: []int{1, 128, 128, 3}}, 196608, false},
		{Info{DataType: Uint8, Shape: []int{2, 3}}, 6, false},
		{Info{DataType: Int64, Shape: nil}, 8, false},
		{Info{DataType: FP16, Shape: []int{0, 7}}, 0, false},
		{Info{DataType: FP32, Shape: []int{-1, 3}}, 0, true},
		{Info{DataType: Bytes, Shape: []int{2}}, 0, true},
		{Info{DataType: FP32, Shape: []int{1 << 30, 1 << 30}}, 0, true},
	} {
		got, err := tc.info.ByteSize()
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%+v.ByteSize() = %d, %v; want %d, err=%v", tc.info, got, err, tc.want, tc.err)
		}
	}
	if _, err := NumElements([]int{-2}); !errors.Is(err, ErrShape) {
		t.Errorf("NumElements([-2]) error = %v, want ErrShape", err)
	}
}

func TestSameShape(t *testing.T) {
	if !SameShape([]int{-1, 3}, []int{5, 3}) {
		t.Error("open dimension should match any size")
	}
	if SameShape([]int{1, 3}, []int{1, 4}) || SameShape([]int{1}, []int{1, 1}) {
		t.Error("different shapes matched")
	}
}
