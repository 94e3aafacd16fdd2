package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// WriteChart draws the median cold-start seconds by contender and profile,
// one panel per workload, with gnuplot (pngcairo) into path.
func WriteChart(ctx context.Context, path string, r Results, profiles []string) error {
	var workloads []string
	for _, w := range Workloads() {
		for _, x := range r.Runs {
			if x.Workload == w {
				workloads = append(workloads, w)
				break
			}
		}
	}
	if len(workloads) == 0 {
		return fmt.Errorf("chart: no runs")
	}
	dir, err := os.MkdirTemp("", "clipbench-chart-")
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	defer os.RemoveAll(dir)

	cols, rows := 2, (len(workloads)+1)/2
	if len(workloads) == 1 {
		cols = 1
	}
	var s bytes.Buffer
	fmt.Fprintf(&s, "set terminal pngcairo size %d,%d font 'sans,10'\nset output %q\n", 560*cols, 380*rows, path)
	fmt.Fprintf(&s, "set multiplot layout %d,%d title 'Cold start: seconds from mount request (or pull start) to workload exit (median)'\n", rows, cols)
	s.WriteString("set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.85 border -1\n")
	s.WriteString("set boxwidth 0.9\nset ylabel 'seconds'\nset yrange [0:*]\nset grid ytics\nset key top left\n")
	for i, w := range workloads {
		data := filepath.Join(dir, fmt.Sprintf("%d.dat", i))
		var d bytes.Buffer
		d.WriteString("profile " + strings.Join(Contenders(), " ") + "\n")
		for _, p := range profiles {
			d.WriteString(p)
			for _, c := range Contenders() {
				runs := r.Select(p, c, w)
				if len(runs) == 0 {
					d.WriteString(" 0")
					continue
				}
				fmt.Fprintf(&d, " %.4f", Summarize(runs).Seconds)
			}
			d.WriteString("\n")
		}
		if err := os.WriteFile(data, d.Bytes(), 0o644); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		fmt.Fprintf(&s, "set title %q\n", w)
		fmt.Fprintf(&s, "plot for [c=2:%d] %q using c:xtic(1) title columnheader(c)\n", len(Contenders())+1, data)
	}
	s.WriteString("unset multiplot\n")
	script := filepath.Join(dir, "chart.gp")
	if err := os.WriteFile(script, s.Bytes(), 0o644); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if out, err := exec.CommandContext(ctx, "gnuplot", script).CombinedOutput(); err != nil {
		return fmt.Errorf("chart: gnuplot: %w\n%s", err, out)
	}
	return nil
}
