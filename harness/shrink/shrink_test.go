package shrink

import (
	"context"
	"reflect"
	"strings"
	"testing"
)

// A sequence fails when it holds both "x" and "y": ddmin finds exactly
// those two, judging each round as one batch.
func TestMinimizeFindsTheCulprits(t *testing.T) {
	var steps []string
	for i := 0; i < 40; i++ {
		steps = append(steps, "s")
	}
	steps[7], steps[31] = "x", "y"
	judge := func(_ context.Context, cands [][]string) (int, error) {
		for i, c := range cands {
			j := strings.Join(c, " ")
			if strings.Contains(j, "x") && strings.Contains(j, "y") {
				return i, nil
			}
		}
		return -1, nil
	}
	got, rounds, err := Minimize(context.Background(), steps, func(s []string) []string { return s }, judge)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []string{"x", "y"}) {
		t.Errorf("Minimize = %v, want [x y]", got)
	}
	t.Logf("%d rounds for 40 steps", rounds)
}
