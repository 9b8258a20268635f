package stream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/draw"
	"image/jpeg"
	"image/png"
	"math"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// maxPixels bounds a frame's size before it is decoded (a 4K UHD frame is
// 8.3 million), so a crafted header cannot make us allocate gigabytes.
const maxPixels = 1 << 23

// imageDecoder reads a JPEG or PNG frame and resizes it (bilinear) to the
// model's image input: one input shaped [1, H, W, C] or [H, W, C] with C 1
// (grey) or 3 (RGB), of FP32 (pixels mapped onto [lo, hi]), UINT8 (as is)
// or INT8 (minus 128).
type imageDecoder struct {
	lo, hi float32
	rgba   *image.RGBA // reused while frames keep their size
	out    []byte
}

func (d *imageDecoder) elements([]byte, catalog.Entry) ([]byte, error) {
	return nil, fmt.Errorf("%w: the image decoder takes no window", ErrOptions)
}

// imageInput checks that in is an image tensor and returns its size.
func imageInput(e catalog.Entry) (in tensor.Info, h, w, c int, err error) {
	if len(e.Inputs) != 1 {
		return in, 0, 0, 0, fmt.Errorf("%w: the image decoder needs a model with one input, %s has %d", ErrUnsupportedModel, e.Name, len(e.Inputs))
	}
	in = e.Inputs[0]
	s := in.Shape
	if len(s) == 4 && s[0] == 1 {
		s = s[1:]
	}
	if len(s) != 3 || s[0] <= 0 || s[1] <= 0 || (s[2] != 1 && s[2] != 3) {
		return in, 0, 0, 0, fmt.Errorf("%w: input %q shape %v: the image decoder needs [1, H, W, 1 or 3]", ErrUnsupportedModel, in.Name, in.Shape)
	}
	switch in.DataType {
	case tensor.FP32, tensor.Uint8, tensor.Int8:
	default:
		return in, 0, 0, 0, fmt.Errorf("%w: input %q is %s: the image decoder fills FP32, UINT8 or INT8", ErrUnsupportedModel, in.Name, in.DataType)
	}
	return in, s[0], s[1], s[2], nil
}

func (d *imageDecoder) inputs(p []byte, e catalog.Entry) ([][]byte, error) {
	in, h, w, c, err := imageInput(e)
	if err != nil {
		return nil, err
	}
	var (
		decode func([]byte) (image.Image, error)
		config func([]byte) (image.Config, error)
	)
	switch {
	case bytes.HasPrefix(p, []byte("\xff\xd8")):
		decode = func(b []byte) (image.Image, error) { return jpeg.Decode(bytes.NewReader(b)) }
		config = func(b []byte) (image.Config, error) { return jpeg.DecodeConfig(bytes.NewReader(b)) }
	case bytes.HasPrefix(p, []byte("\x89PNG\r\n\x1a\n")):
		decode = func(b []byte) (image.Image, error) { return png.Decode(bytes.NewReader(b)) }
		config = func(b []byte) (image.Config, error) { return png.DecodeConfig(bytes.NewReader(b)) }
	default:
		return nil, badMessage("not a JPEG or PNG frame")
	}
	cfg, err := config(p)
	if err != nil {
		return nil, badMessage("frame header: %v", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > maxPixels {
		return nil, badMessage("frame is %dx%d, at most %d pixels are read", cfg.Width, cfg.Height, maxPixels)
	}
	img, err := decode(p)
	if err != nil {
		return nil, badMessage("frame: %v", err)
	}
	b := img.Bounds()
	if d.rgba == nil || d.rgba.Rect.Dx() != b.Dx() || d.rgba.Rect.Dy() != b.Dy() {
		d.rgba = image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	}
	draw.Draw(d.rgba, d.rgba.Rect, img, b.Min, draw.Src)
	size, _ := in.ByteSize()
	d.out = resize(d.out[:0], d.rgba, h, w, c, in.DataType, d.lo, d.hi)
	if len(d.out) != size {
		return nil, fmt.Errorf("stream: image decoder wrote %d bytes for %d", len(d.out), size) // our bug
	}
	return [][]byte{d.out}, nil
}

// resize samples src bilinearly at h x w (pixel centres aligned) and appends
// the pixels row-major, c channels each, as dt.
func resize(dst []byte, src *image.RGBA, h, w, c int, dt tensor.DataType, lo, hi float32) []byte {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	fx, fy := float32(sw)/float32(w), float32(sh)/float32(h)
	var px [3]float32
	for y := range h {
		sy := clampf((float32(y)+0.5)*fy-0.5, 0, float32(sh-1))
		y0 := int(sy)
		y1, ty := min(y0+1, sh-1), sy-float32(y0)
		for x := range w {
			sx := clampf((float32(x)+0.5)*fx-0.5, 0, float32(sw-1))
			x0 := int(sx)
			x1, tx := min(x0+1, sw-1), sx-float32(x0)
			for k := range 3 {
				a := float32(src.Pix[y0*src.Stride+x0*4+k])
				b := float32(src.Pix[y0*src.Stride+x1*4+k])
				cc := float32(src.Pix[y1*src.Stride+x0*4+k])
				dd := float32(src.Pix[y1*src.Stride+x1*4+k])
				px[k] = (a*(1-tx)+b*tx)*(1-ty) + (cc*(1-tx)+dd*tx)*ty
			}
			vals := px[:]
			if c == 1 { // ITU-R BT.601 luma
				px[0] = 0.299*px[0] + 0.587*px[1] + 0.114*px[2]
				vals = px[:1]
			}
			for _, v := range vals {
				switch dt {
				case tensor.FP32:
					dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(lo+(hi-lo)*v/255))
				case tensor.Uint8:
					dst = append(dst, byte(clampf(v+0.5, 0, 255)))
				case tensor.Int8:
					dst = append(dst, byte(int8(clampf(v+0.5, 0, 255)-128)))
				}
			}
		}
	}
	return dst
}

func clampf(v, lo, hi float32) float32 { return min(max(v, lo), hi) }
