// yaml2json reads YAML (or JSON) streams exactly as kubectl does and prints what the
// API server would be sent: kubectl apply/create split a stream with apimachinery's
// YAMLOrJSONDecoder and convert each YAML document with sigs.k8s.io/yaml (goyaml v2
// scalar rules: YAML 1.1 octal, yes/no/on/off, ...), skipping empty and null documents.
//
//	yaml2json [FILE...]   (no FILE: standard input)
//
// For each input, one line on standard output: {"documents":[...]} with one JSON value
// per document, or {"error":"..."} when kubectl would refuse the input.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/util/yaml"
)

func read(r io.Reader) (docs []json.RawMessage, err error) {
	// The buffer size kubectl's resource builder uses.
	d := yaml.NewYAMLOrJSONDecoder(r, 4096)
	for {
		// Like runtime.RawExtension: a json.Unmarshaler, so sigs.k8s.io/yaml converts
		// with no target type (plain YAMLToJSON).
		var doc json.RawMessage
		if err := d.Decode(&doc); err != nil {
			if err == io.EOF {
				return docs, nil
			}
			return nil, err
		}
		doc = bytes.TrimSpace(doc)
		if len(doc) == 0 || bytes.Equal(doc, []byte("null")) {
			continue
		}
		docs = append(docs, doc)
	}
}

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	emit := func(r io.Reader) {
		docs, err := read(r)
		var line []byte
		if err != nil {
			line, err = json.Marshal(map[string]string{"error": err.Error()})
		} else {
			if docs == nil {
				docs = []json.RawMessage{}
			}
			line, err = json.Marshal(map[string][]json.RawMessage{"documents": docs})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "yaml2json:", err)
			os.Exit(2)
		}
		out.Write(line)
		out.WriteByte('\n')
	}
	if len(os.Args) == 1 {
		emit(os.Stdin)
		return
	}
	for _, path := range os.Args[1:] {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "yaml2json:", err)
			os.Exit(2)
		}
		emit(f)
		f.Close()
	}
}
