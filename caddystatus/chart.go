package caddystatus

import (
	"fmt"
	"html"
	"html/template"
	"strings"
	"time"
)

// A chart is drawn on the server as an SVG line over time: no script and
// no image request, so that it is there without JavaScript and in every
// update the page receives.
const (
	chartWidth  = 640
	chartHeight = 160
	// chartPoints bounds the points of a line, whatever the samples.
	chartPoints = 320
	// Margins hold the axis labels.
	marginLeft, marginRight, marginTop, marginBottom = 64, 8, 10, 22
)

// point is one value of a chart at a time.
type point struct {
	at    time.Time
	value float64
}

// chart is a line over [from, to], with an optional limit drawn as a
// dashed line.
type chart struct {
	title    string
	from, to time.Time
	points   []point
	limit    float64 // 0: none
	format   func(float64) string
}

// svg draws the chart.
func (c chart) svg() template.HTML {
	top := c.limit
	for _, p := range c.points {
		top = max(top, p.value)
	}
	if top <= 0 {
		top = 1
	}
	top *= 1.1
	plotW := float64(chartWidth - marginLeft - marginRight)
	plotH := float64(chartHeight - marginTop - marginBottom)
	span := c.to.Sub(c.from).Seconds()
	x := func(t time.Time) float64 {
		return float64(marginLeft) + plotW*min(max(t.Sub(c.from).Seconds()/span, 0), 1)
	}
	y := func(v float64) float64 { return float64(marginTop) + plotH*(1-v/top) }

	var b strings.Builder
	title := html.EscapeString(c.title)
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="%s"><title>%s</title>`, chartWidth, chartHeight, title, title)
	fmt.Fprintf(&b, `<rect class="plot" x="%d" y="%d" width="%.0f" height="%.0f"/>`, marginLeft, marginTop, plotW, plotH)
	for _, v := range []float64{0, top / 2, top} {
		fmt.Fprintf(&b, `<text class="axis" x="%d" y="%.1f" text-anchor="end">%s</text>`, marginLeft-6, y(v)+4, html.EscapeString(c.format(v)))
		fmt.Fprintf(&b, `<line class="grid" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>`, marginLeft, chartWidth-marginRight, y(v), y(v))
	}
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d">%s</text>`, marginLeft, chartHeight-6, html.EscapeString(c.from.UTC().Format("Jan 2 15:04")))
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d" text-anchor="end">%s</text>`, chartWidth-marginRight, chartHeight-6, html.EscapeString(c.to.UTC().Format("Jan 2 15:04 MST")))
	if c.limit > 0 {
		fmt.Fprintf(&b, `<line class="limit" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>`, marginLeft, chartWidth-marginRight, y(c.limit), y(c.limit))
	}
	if len(c.points) > 0 {
		b.WriteString(`<polyline class="line" points="`)
		for i, p := range c.points {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%.1f,%.1f", x(p.at), y(p.value))
		}
		b.WriteString(`"/>`)
	} else {
		fmt.Fprintf(&b, `<text class="axis" x="%.0f" y="%.0f" text-anchor="middle">no samples yet</text>`, float64(marginLeft)+plotW/2, float64(marginTop)+plotH/2)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // every text in it is escaped above
}

// thin keeps at most chartPoints of points over [from, to]: the last of
// each equal slice of time.
func thin(points []point, from, to time.Time) []point {
	if len(points) <= chartPoints {
		return points
	}
	slice := to.Sub(from) / chartPoints
	out := make([]point, 0, chartPoints+1)
	for _, p := range points {
		if n := len(out); n > 0 && p.at.Sub(from)/slice == out[n-1].at.Sub(from)/slice {
			out[n-1] = p
			continue
		}
		out = append(out, p)
	}
	return out
}
