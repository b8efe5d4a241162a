package mfa

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"strings"

	"github.com/boombuler/barcode"
	"github.com/boombuler/barcode/qr"
)

// Quiet zones, in modules. The QR specification asks for four; a terminal
// rendering keeps two to stay short enough for a notice, which phone
// cameras read without trouble.
const (
	pngQuietZone      = 4
	terminalQuietZone = 2
)

// qrModules encodes content and reports which modules are dark.
func qrModules(content string, level qr.ErrorCorrectionLevel) (func(x, y int) bool, int, error) {
	code, err := qr.Encode(content, level, qr.Auto)
	if err != nil {
		return nil, 0, fmt.Errorf("mfa: QR code: %w", err)
	}
	n := code.Bounds().Dx()
	dark := func(x, y int) bool {
		if x < 0 || y < 0 || x >= n || y >= n {
			return false // the quiet zone is light
		}
		return isDark(code, x, y)
	}
	return dark, n, nil
}

func isDark(code barcode.Barcode, x, y int) bool {
	b := code.Bounds()
	g := color.GrayModel.Convert(code.At(b.Min.X+x, b.Min.Y+y)).(color.Gray)
	return g.Y < 128
}

// TerminalQR draws content as a QR code in lines of Unicode half blocks
// ('▀', '▄', '█' and spaces), two modules to a character cell, inside a
// quiet zone. Light modules are drawn and dark ones left blank, which is
// right for the usual light-on-dark terminal (phone cameras also read the
// inverse). Every line has the same width; none has trailing blanks that
// a client could trim, since the quiet zone is drawn.
//
// In psql, send the lines as one NOTICE whose first line is text: psql
// prefixes only the first line of a message with "NOTICE:  ", so the
// code's lines stay aligned.
func TerminalQR(content string) ([]string, error) {
	// Level L keeps the code small enough for a terminal; a screen is not
	// a scuffed label.
	dark, n, err := qrModules(content, qr.L)
	if err != nil {
		return nil, err
	}
	q := terminalQuietZone
	var lines []string
	for y := -q; y < n+q; y += 2 {
		var b strings.Builder
		for x := -q; x < n+q; x++ {
			top, bottom := !dark(x, y), !dark(x, y+1)
			if y+1 >= n+q {
				bottom = false // below the code: nothing drawn
			}
			switch {
			case top && bottom:
				b.WriteRune('█')
			case top:
				b.WriteRune('▀')
			case bottom:
				b.WriteRune('▄')
			default:
				b.WriteRune(' ')
			}
		}
		lines = append(lines, b.String())
	}
	return lines, nil
}

// PNG draws content as a black-on-white QR code with a four-module quiet
// zone, in whole pixels per module, at least size pixels wide (or the
// smallest readable size, whichever is larger).
func PNG(content string, size int) ([]byte, error) {
	dark, n, err := qrModules(content, qr.M)
	if err != nil {
		return nil, err
	}
	total := n + 2*pngQuietZone
	scale := (size + total - 1) / total
	if scale < 4 {
		scale = 4
	}
	img := image.NewGray(image.Rect(0, 0, total*scale, total*scale))
	for py := 0; py < total*scale; py++ {
		for px := 0; px < total*scale; px++ {
			c := color.Gray{Y: 255}
			if dark(px/scale-pngQuietZone, py/scale-pngQuietZone) {
				c = color.Gray{Y: 0}
			}
			img.SetGray(px, py, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("mfa: encode PNG: %w", err)
	}
	return buf.Bytes(), nil
}
