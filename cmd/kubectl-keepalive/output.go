package main

import (
	"encoding/json"
	"fmt"
	"io"

	sigsyaml "sigs.k8s.io/yaml"
)

// checkOutput refuses an -o the commands do not write.
func checkOutput(command, format string) error {
	switch format {
	case "", "json", "yaml":
		return nil
	}
	return fmt.Errorf("%s: -o %q: only json and yaml", command, format)
}

// write writes v as -o asks: JSON, YAML, or text for a person.
func write(out io.Writer, format string, v any, text func() string) error {
	var raw []byte
	var err error
	switch format {
	case "json":
		raw, err = json.MarshalIndent(v, "", "  ")
		raw = append(raw, '\n')
	case "yaml":
		raw, err = sigsyaml.Marshal(v)
	default:
		raw = []byte(text())
	}
	if err != nil {
		return err
	}
	_, err = out.Write(raw)
	return err
}
