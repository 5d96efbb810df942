package train

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Point is one (iteration, loss) sample of a curve.
type Point struct {
	Iter int
	Loss float64
}

// WriteLossSVG draws the training and validation loss curves as a small,
// self-contained SVG picture.
func WriteLossSVG(w io.Writer, title string, train, val []Point) error {
	const W, H, L, R, T, B = 640.0, 400.0, 60.0, 20.0, 40.0, 50.0
	var all []Point
	all = append(append(all, train...), val...)
	if len(all) == 0 {
		return fmt.Errorf("train: no loss values to plot")
	}
	minI, maxI := all[0].Iter, all[0].Iter
	minL, maxL := math.Inf(1), math.Inf(-1)
	for _, p := range all {
		minI, maxI = min(minI, p.Iter), max(maxI, p.Iter)
		if !math.IsNaN(p.Loss) && !math.IsInf(p.Loss, 0) {
			minL, maxL = math.Min(minL, p.Loss), math.Max(maxL, p.Loss)
		}
	}
	if maxI == minI {
		maxI = minI + 1
	}
	if !(maxL > minL) {
		minL, maxL = minL-0.5, minL+0.5
	}
	pad := (maxL - minL) * 0.05
	minL, maxL = minL-pad, maxL+pad
	x := func(i int) float64 { return L + (W-L-R)*float64(i-minI)/float64(maxI-minI) }
	y := func(l float64) float64 { return T + (H-T-B)*(1-(l-minL)/(maxL-minL)) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%g" y="24" font-size="15">%s</text>`+"\n", L, escape(title))
	fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/><line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", L, H-B, W-R, H-B, L, T, L, H-B)
	for k := 0; k <= 4; k++ {
		l := minL + (maxL-minL)*float64(k)/4
		fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="end">%.3f</text><line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#ddd"/>`+"\n", L-6, y(l)+4, l, L, y(l), W-R, y(l))
		it := minI + (maxI-minI)*k/4
		fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle">%d</text>`+"\n", x(it), H-B+18, it)
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle">iteration</text>`+"\n", (L+W-R)/2, H-10)
	for _, c := range []struct {
		pts   []Point
		color string
		name  string
		dy    float64
	}{{train, "#1f77b4", "train loss", 0}, {val, "#d62728", "validation loss", 16}} {
		if len(c.pts) == 0 {
			continue
		}
		var pts []string
		for _, p := range c.pts {
			if !math.IsNaN(p.Loss) && !math.IsInf(p.Loss, 0) {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.Iter), y(p.Loss)))
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", c.color, strings.Join(pts, " "))
		for _, s := range pts {
			var px, py float64
			fmt.Sscanf(s, "%f,%f", &px, &py)
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, px, py, c.color)
		}
		fmt.Fprintf(&b, "\n"+`<rect x="%g" y="%g" width="14" height="3" fill="%s"/><text x="%g" y="%g">%s</text>`+"\n", W-R-150, T+c.dy-4, c.color, W-R-130, T+c.dy, c.name)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
