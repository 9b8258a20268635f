package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// Model signatures as the registry reports them (the shapes of the test
// models' inputs), for the decoders alone.
var (
	imageModel = catalog.Entry{Name: "img", Inputs: []tensor.Info{{Name: "input", DataType: tensor.FP32, Shape: []int{1, 4, 4, 3}}}}
	greyModel  = catalog.Entry{Name: "grey", Inputs: []tensor.Info{{Name: "input", DataType: tensor.Uint8, Shape: []int{1, 2, 2, 1}}}}
	twoInputs  = catalog.Entry{Name: "two", Inputs: []tensor.Info{
		{Name: "a", DataType: tensor.FP32, Shape: []int{1, 2}},
		{Name: "b", DataType: tensor.Int8, Shape: []int{3}},
	}}
	openModel = catalog.Entry{Name: "open", Inputs: []tensor.Info{{Name: "x", DataType: tensor.FP32, Shape: []int{-1, 2}}}}
)

func f32(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func TestRawDecoder(t *testing.T) {
	d := &rawDecoder{}
	in, err := d.inputs(append(f32(1, 2), 7, 8, 9), twoInputs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in[0], f32(1, 2)) || !bytes.Equal(in[1], []byte{7, 8, 9}) {
		t.Errorf("got inputs %v, want [f32(1,2) 7 8 9]", in)
	}
	for _, tt := range []struct {
		name    string
		payload []byte
		e       catalog.Entry
		want    error
		msg     string
	}{
		{"short", f32(1, 2), twoInputs, ErrBadMessage, "8 bytes, model two takes 11"},
		{"long", make([]byte, 12), twoInputs, ErrBadMessage, "12 bytes"},
		{"open dimension", f32(1, 2), openModel, ErrUnsupportedModel, `input "x"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.inputs(tt.payload, tt.e)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %v, want %v with %q", err, tt.want, tt.msg)
			}
		})
	}
	if _, err := d.elements(make([]byte, 6), imageModel); !errors.Is(err, ErrBadMessage) {
		t.Errorf("6 bytes as FP32 elements: got %v, want ErrBadMessage", err)
	}
	if _, err := d.elements(make([]byte, 8), twoInputs); !errors.Is(err, ErrUnsupportedModel) {
		t.Errorf("window on two inputs: got %v, want ErrUnsupportedModel", err)
	}
	if got, err := d.elements(f32(1, 2, 3), imageModel); err != nil || len(got) != 12 {
		t.Errorf("3 FP32 elements: got %d bytes, %v", len(got), err)
	}
}

const twoInputsJSON = `{"inputs":[{"name":"b","datatype":"INT8","shape":[3],"data":[7,8,-9]},{"name":"a","datatype":"FP32","shape":[1,2],"data":[1,2]}]}`

func TestJSONDecoder(t *testing.T) {
	d := &jsonDecoder{}
	in, err := d.inputs([]byte(twoInputsJSON), twoInputs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in[0], f32(1, 2)) || !bytes.Equal(in[1], []byte{7, 8, 0xf7}) {
		t.Errorf("got inputs %v, want signature order", in)
	}
	for _, tt := range []struct {
		name, payload, msg string
	}{
		{"not JSON", `hello`, "stream: bad message"},
		{"one input of two", `{"inputs":[{"name":"a","datatype":"FP32","shape":[1,2],"data":[1,2]}]}`, "1 inputs, model two takes 2"},
		{"wrong name", `{"inputs":[{"name":"a","datatype":"FP32","shape":[1,2],"data":[1,2]},{"name":"c","datatype":"INT8","shape":[3],"data":[1,2,3]}]}`, `input "b" is missing`},
		{"wrong type", strings.Replace(twoInputsJSON, `"INT8"`, `"INT16"`, 1), `input "b": INT16 [3], model takes INT8 [3]`},
		{"wrong shape", strings.Replace(twoInputsJSON, `"shape":[3],"data":[7,8,-9]`, `"shape":[2],"data":[7,8]`, 1), `input "b": INT8 [2], model takes INT8 [3]`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.inputs([]byte(tt.payload), twoInputs)
			if !errors.Is(err, ErrBadMessage) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %v, want ErrBadMessage with %q", err, tt.msg)
			}
		})
	}
	el, err := d.elements([]byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[3],"data":[1,2,3]}]}`), imageModel)
	if err != nil || !bytes.Equal(el, f32(1, 2, 3)) {
		t.Errorf("window elements: got %v, %v", el, err)
	}
	if _, err := d.elements([]byte(`{"inputs":[{"name":"input","datatype":"INT32","shape":[1],"data":[1]}]}`), imageModel); !errors.Is(err, ErrBadMessage) {
		t.Errorf("window elements of another type: got %v, want ErrBadMessage", err)
	}
}

func encodePNG(t testing.TB, img image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, img image.Image) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func uniform(w, h int, c color.Color) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	return img
}

func TestImageDecoder(t *testing.T) {
	d := &imageDecoder{lo: -1, hi: 1}
	// A uniform frame of any size gives the same value everywhere.
	for _, frame := range [][]byte{
		encodePNG(t, uniform(7, 3, color.RGBA{255, 0, 51, 255})),
		encodeJPEG(t, uniform(16, 16, color.RGBA{255, 0, 51, 255})),
	} {
		in, err := d.inputs(frame, imageModel)
		if err != nil {
			t.Fatal(err)
		}
		if len(in) != 1 || len(in[0]) != 4*4*3*4 {
			t.Fatalf("got %d inputs of %d bytes, want 1 of 192", len(in), len(in[0]))
		}
		want := [3]float32{1, -1, -0.6}
		for i := 0; i < len(in[0]); i += 4 {
			got := math.Float32frombits(binary.LittleEndian.Uint32(in[0][i:]))
			if w := want[(i/4)%3]; math.Abs(float64(got-w)) > 0.05 {
				t.Fatalf("element %d: got %v, want %v", i/4, got, w)
			}
		}
	}
	// Bilinear: a 2x1 black-white frame stretched to 2x2 grey keeps its
	// ends; luma of white is 255.
	bw := image.NewGray(image.Rect(0, 0, 2, 1))
	bw.Pix[1] = 255
	in, err := (&imageDecoder{}).inputs(encodePNG(t, bw), greyModel)
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0, 255, 0, 255}; !bytes.Equal(in[0], want) {
		t.Errorf("got %v, want %v", in[0], want)
	}
	for _, tt := range []struct {
		name    string
		payload []byte
		e       catalog.Entry
		want    error
		msg     string
	}{
		{"gif", []byte("GIF89a...."), imageModel, ErrBadMessage, "not a JPEG or PNG frame"},
		{"truncated png", encodePNG(t, uniform(8, 8, color.White))[:40], imageModel, ErrBadMessage, "frame"},
		{"two inputs", encodePNG(t, bw), twoInputs, ErrUnsupportedModel, "one input"},
		{"not an image shape", encodePNG(t, bw), openModel, ErrUnsupportedModel, "[1, H, W, 1 or 3]"},
		{"huge header", hugePNGHeader(), imageModel, ErrBadMessage, "at most"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.inputs(tt.payload, tt.e)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %v, want %v with %q", err, tt.want, tt.msg)
			}
		})
	}
}

// hugePNGHeader is a PNG that claims to be 100000 x 100000 pixels.
func hugePNGHeader() []byte {
	var b bytes.Buffer
	png.Encode(&b, image.NewGray(image.Rect(0, 0, 1, 1)))
	p := b.Bytes()
	binary.BigEndian.PutUint32(p[16:], 100000) // IHDR width
	binary.BigEndian.PutUint32(p[20:], 100000) // IHDR height
	binary.BigEndian.PutUint32(p[29:], crc32.ChecksumIEEE(p[12:29]))
	return p
}

// The fuzz targets feed untrusted payloads to each decoder: no panic, and
// either an error wrapping ErrBadMessage or inputs of exactly the model's
// sizes. Their seeds run with the other tests.

func checkDecoded(t *testing.T, e catalog.Entry, in [][]byte, err error) {
	if err != nil {
		if !errors.Is(err, ErrBadMessage) {
			t.Fatalf("error does not wrap ErrBadMessage: %v", err)
		}
		return
	}
	sizes, serr := inputSizes(e)
	if serr != nil || len(in) != len(sizes) {
		t.Fatalf("got %d inputs for %d", len(in), len(sizes))
	}
	for i := range sizes {
		if len(in[i]) != sizes[i] {
			t.Fatalf("input %d: got %d bytes, want %d", i, len(in[i]), sizes[i])
		}
	}
}

func FuzzRawDecoder(f *testing.F) {
	f.Add(append(f32(1, 2), 7, 8, 9))
	f.Add(f32(1, 2))
	f.Add([]byte{})
	d := &rawDecoder{}
	f.Fuzz(func(t *testing.T, p []byte) {
		in, err := d.inputs(p, twoInputs)
		checkDecoded(t, twoInputs, in, err)
		if el, err := d.elements(p, imageModel); err == nil && len(el)%4 != 0 {
			t.Fatalf("%d bytes of FP32 elements", len(el))
		}
	})
}

func FuzzJSONDecoder(f *testing.F) {
	f.Add([]byte(twoInputsJSON))
	f.Add([]byte(`{"inputs":[{"name":"a","datatype":"FP32","shape":[1,2],"data":[1,2]}]}`))
	f.Add([]byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[3],"data":[1,2,3]}]}`))
	f.Add([]byte(`{"inputs":[`))
	d := &jsonDecoder{}
	f.Fuzz(func(t *testing.T, p []byte) {
		in, err := d.inputs(p, twoInputs)
		checkDecoded(t, twoInputs, in, err)
		if el, err := d.elements(p, imageModel); err == nil && len(el)%4 != 0 {
			t.Fatalf("%d bytes of FP32 elements", len(el))
		} else if err != nil && !errors.Is(err, ErrBadMessage) {
			t.Fatalf("error does not wrap ErrBadMessage: %v", err)
		}
	})
}

func FuzzImageDecoder(f *testing.F) {
	f.Add(encodePNG(f, uniform(7, 3, color.RGBA{255, 0, 51, 255})))
	f.Add(encodeJPEG(f, uniform(16, 16, color.RGBA{1, 2, 3, 255})))
	f.Add(encodePNG(f, image.NewGray(image.Rect(0, 0, 2, 1))))
	f.Add(hugePNGHeader())
	f.Add([]byte("\xff\xd8\xff"))
	d := &imageDecoder{lo: 0, hi: 1}
	f.Fuzz(func(t *testing.T, p []byte) {
		in, err := d.inputs(p, imageModel)
		checkDecoded(t, imageModel, in, err)
		in, err = d.inputs(p, greyModel)
		checkDecoded(t, greyModel, in, err)
	})
}
