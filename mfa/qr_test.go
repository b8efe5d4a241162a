package mfa_test

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	"github.com/portcullisdb/portcullis/mfa"
)

const sampleURI = "otpauth://totp/portcullis:alice@contoso.example?algorithm=SHA1&digits=6&issuer=portcullis&period=30&secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"

// decodeQR reads a QR code from an image with a real QR reader.
func decodeQR(t *testing.T, img image.Image) string {
	t.Helper()
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	res, err := qrcode.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]any{gozxing.DecodeHintType_TRY_HARDER: true})
	if err != nil {
		t.Fatalf("the QR code does not decode: %v", err)
	}
	return res.GetText()
}

func TestTerminalQR(t *testing.T) {
	lines, err := mfa.TerminalQR(sampleURI)
	if err != nil {
		t.Fatal(err)
	}
	width := utf8.RuneCountInString(lines[0])
	for i, l := range lines {
		if n := utf8.RuneCountInString(l); n != width {
			t.Fatalf("line %d is %d wide, line 0 is %d", i, n, width)
		}
		if strings.TrimRight(l, " ") != l || strings.TrimLeft(l, " ") != l {
			t.Errorf("line %d starts or ends with a blank a client could trim: %q", i, l)
		}
		for _, r := range l {
			if !strings.ContainsRune("▀▄█ ", r) {
				t.Fatalf("line %d holds %q", i, r)
			}
		}
	}
	// A phone looking at a light-on-dark terminal: blocks are light, the
	// rest (and the terminal around it) dark.
	const px = 4
	img := image.NewGray(image.Rect(0, 0, (width+8)*px, (2*len(lines)+8)*px))
	for y, l := range lines {
		x := 0
		for _, r := range l {
			top := r == '█' || r == '▀'
			bottom := r == '█' || r == '▄'
			fill(img, (x+4)*px, (2*y+4)*px, px, top)
			fill(img, (x+4)*px, (2*y+5)*px, px, bottom)
			x++
		}
	}
	if got := decodeQR(t, img); got != sampleURI {
		t.Errorf("decoded %q, want %q", got, sampleURI)
	}
	if len(lines) > 40 || width > 80 {
		t.Errorf("the code is %d×%d characters; too big for a terminal", width, len(lines))
	}
}

func fill(img *image.Gray, x0, y0, size int, light bool) {
	c := color.Gray{Y: 0}
	if light {
		c = color.Gray{Y: 255}
	}
	for y := y0; y < y0+size; y++ {
		for x := x0; x < x0+size; x++ {
			img.SetGray(x, y, c)
		}
	}
}

func TestPNG(t *testing.T) {
	b, err := mfa.PNG(sampleURI, 300)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if w := img.Bounds().Dx(); w < 300 || w != img.Bounds().Dy() {
		t.Errorf("image is %v, want square and at least 300 wide", img.Bounds())
	}
	// Black on white, with a white quiet zone.
	if g := color.GrayModel.Convert(img.At(0, 0)).(color.Gray); g.Y != 255 {
		t.Errorf("corner pixel = %d, want white", g.Y)
	}
	if got := decodeQR(t, img); got != sampleURI {
		t.Errorf("decoded %q, want %q", got, sampleURI)
	}
}

func TestEnrollmentQR(t *testing.T) {
	clk := &fixedClock{now: t0}
	m, _ := newTOTP(t, clk)
	e := enrolment(t, m)
	lines, err := e.TerminalQR()
	if err != nil || len(lines) == 0 {
		t.Fatalf("TerminalQR = %d lines, %v", len(lines), err)
	}
	b, err := e.PNG(200)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got := decodeQR(t, img); got != e.URI {
		t.Errorf("the enrolment PNG decodes to another URI")
	}
}
