// Package yamlconf decodes the YAML configuration files (agent.yaml,
// fleet.yaml) strictly, with errors written for the person who edits the
// file: the file, the line and the key or value, never a Go type.
//
//	agent.yaml:3: unknown key "thread"
//	agent.yaml:7: "lots" is not an integer
//	fleet.yaml:2: did not find expected key
package yamlconf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Decode decodes the YAML document b into v. Unknown keys are an error, so
// a typo does not silently fall back to a default; an empty document leaves
// v as it was. name (the file's name) starts every message; the errors are
// joined, one a line.
func Decode(name string, b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err := dec.Decode(v)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		errs := make([]error, 0, len(te.Errors))
		for _, e := range te.Errors {
			errs = append(errs, errors.New(name+":"+rewrite(e)))
		}
		return errors.Join(errs...)
	}
	// Syntax errors: "yaml: line 3: mapping values are not allowed in this context".
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: %s", name, m[1], m[2])
	}
	return fmt.Errorf("%s: %s", name, msg)
}

var (
	lineRE    = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownRE = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)
	typeRE    = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
	dupRE     = regexp.MustCompile(`^line (\d+): mapping key "(.*)" already defined at line (\d+)$`)
)

// rewrite turns one of yaml's type errors into "LINE: message".
func rewrite(e string) string {
	if m := unknownRE.FindStringSubmatch(e); m != nil {
		return fmt.Sprintf("%s: unknown key %q", m[1], m[2])
	}
	if m := dupRE.FindStringSubmatch(e); m != nil {
		return fmt.Sprintf("%s: key %q already set at line %s", m[1], m[2], m[3])
	}
	if m := typeRE.FindStringSubmatch(e); m != nil {
		val := m[3]
		switch m[2] {
		case "map":
			val = "a mapping"
		case "seq":
			val = "a list"
		default:
			val = fmt.Sprintf("%q", val)
		}
		return fmt.Sprintf("%s: %s is not %s", m[1], val, want(m[4]))
	}
	if m := lineRE.FindStringSubmatch(e); m != nil {
		return m[1] + ": " + m[2]
	}
	return " " + e
}

// want names what a Go type holds, for people.
func want(goType string) string {
	switch {
	case goType == "time.Duration":
		return "a duration (like 30s or 5m)"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["):
		return "a mapping"
	}
	return "a mapping of settings"
}
