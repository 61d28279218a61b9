package posixdiff

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Deviations are the known ways meshfs departs from the local file system
// that a run can be told to tolerate (Config.Tolerate), so that it goes on
// to find others. Each is a specific comparison switched off, never a class
// of operation: the operations still run and everything else about them is
// compared. The names are what --tolerate takes.
var Deviations = map[string]string{
	"times-past-2262": "utimensat must store a time after 2262-04-11 (ext4 keeps up to 2446); meshfs keeps " +
		"times as int64 nanoseconds since 1970 and clamps to 1677..2262. " +
		"Tolerating it skips utimens calls with such a time",
}

// ParseDeviations checks a comma-separated list of deviation names.
func ParseDeviations(list string) ([]string, error) {
	var out []string
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if err := checkDeviation(name); err != nil {
			return nil, err
		}
		out = append(out, name)
	}
	return out, nil
}

func checkDeviation(name string) error {
	if _, ok := Deviations[name]; !ok {
		return fmt.Errorf("unknown deviation %q (known: %s)", name, strings.Join(slices.Sorted(maps.Keys(Deviations)), ", "))
	}
	return nil
}
