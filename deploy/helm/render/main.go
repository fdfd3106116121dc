// Command render renders a Helm chart the way `helm template` does, from Debian's Go packages
// alone (no Helm binary, no module download): Go's text/template with the sprig functions and
// Helm's own (include, tpl, required, toYaml, fromYaml, toJson, lookup), values.yaml deep-merged
// with the -f files, validated against values.schema.json with gojsonschema as Helm validates
// it, `.Release`, `.Chart` and `.Capabilities`, templates in name order, partials (`_*.tpl`)
// defined but not rendered, empty documents dropped, and NOTES.txt rendered to stderr.
//
// Build (tests/e2e/deploy.rs does):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render ./deploy/helm/render
//
// Usage: render -chart DIR [-name NAME] [-namespace NS] [-managed-by kubectl] [-f values.yaml]...
//
// deploy/kubernetes/capstan.yaml is this output for release capstan in kube-system, managed by
// kubectl (deploy/helm/render.sh writes it; tests/e2e/deploy.rs checks it is current).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"gopkg.in/yaml.v3"
)

type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	chart := flag.String("chart", "", "chart directory")
	name := flag.String("name", "capstan", "release name")
	namespace := flag.String("namespace", "kube-system", "release namespace")
	service := flag.String("managed-by", "Helm", "`.Release.Service` (kubectl for a plain manifest)")
	var valueFiles files
	flag.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	flag.Parse()
	if err := run(*chart, *name, *namespace, *service, valueFiles); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(chart, name, namespace, service string, valueFiles []string) error {
	values, err := readYAML(filepath.Join(chart, "values.yaml"))
	if err != nil {
		return err
	}
	for _, file := range valueFiles {
		override, err := readYAML(file)
		if err != nil {
			return err
		}
		values = merge(values, override)
	}
	if err := validate(chart, values); err != nil {
		return err
	}
	meta, err := readYAML(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		return err
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": name, "Namespace": namespace, "Service": service,
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.33.0", "Major": "1", "Minor": "33"},
			"APIVersions": apiVersions{"monitoring.coreos.com/v1": true},
		},
		"Template": map[string]interface{}{"BasePath": fmt.Sprintf("%v/templates", meta["name"])},
	}
	root := template.New("chart").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var out bytes.Buffer
		err := root.ExecuteTemplate(&out, name, data)
		return out.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var out bytes.Buffer
		err = t.Execute(&out, data)
		return out.String(), err
	}
	funcs["required"] = func(message string, value interface{}) (interface{}, error) {
		if value == nil || value == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return value, nil
	}
	funcs["toYaml"] = func(v interface{}) string {
		var out bytes.Buffer
		encoder := yaml.NewEncoder(&out)
		encoder.SetIndent(2)
		if err := encoder.Encode(v); err != nil {
			return ""
		}
		return strings.TrimSuffix(out.String(), "\n")
	}
	funcs["fromYaml"] = func(text string) map[string]interface{} {
		out := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(text), &out)
		return out
	}
	funcs["toJson"] = func(v interface{}) string {
		out, _ := json.Marshal(v)
		return string(out)
	}
	funcs["lookup"] = func(...interface{}) map[string]interface{} { return map[string]interface{}{} }
	root.Funcs(funcs)

	names, err := filepath.Glob(filepath.Join(chart, "templates", "*"))
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, path := range names {
		text, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := root.New(templateName(meta, path)).Parse(string(text)); err != nil {
			return err
		}
	}
	for _, path := range names {
		base := filepath.Base(path)
		if strings.HasPrefix(base, "_") {
			continue
		}
		var out bytes.Buffer
		if err := root.ExecuteTemplate(&out, templateName(meta, path), top); err != nil {
			return err
		}
		if base == "NOTES.txt" {
			fmt.Fprint(os.Stderr, out.String())
			continue
		}
		for _, doc := range strings.Split(out.String(), "\n---") {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			fmt.Printf("---\n# Source: %s/templates/%s\n%s\n", meta["name"], base, strings.TrimLeft(doc, "\n"))
		}
	}
	return nil
}

// templateName is Helm's name for a template file: <chart>/templates/<file>.
func templateName(meta map[string]interface{}, path string) string {
	return fmt.Sprintf("%v/templates/%s", meta["name"], filepath.Base(path))
}

// apiVersions answers `.Capabilities.APIVersions.Has`.
type apiVersions map[string]bool

func (a apiVersions) Has(v string) bool { return a[v] }

func stripComments(doc string) string {
	var kept []string
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			kept = append(kept, line)
		}
	}
	return strings.Join(kept, "\n")
}

func readYAML(path string) (map[string]interface{}, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(text, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// merge deep-merges maps as Helm merges values files: maps key by key, anything else replaced.
func merge(base, override map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range override {
		if over, ok := v.(map[string]interface{}); ok {
			if under, ok := out[k].(map[string]interface{}); ok {
				out[k] = merge(under, over)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// validate checks the values against values.schema.json, as `helm install` does.
func validate(chart string, values map[string]interface{}) error {
	schema, err := os.ReadFile(filepath.Join(chart, "values.schema.json"))
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		return err
	}
	document, err := json.Marshal(values)
	if err != nil {
		return err
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewBytesLoader(document))
	if err != nil {
		return fmt.Errorf("values.schema.json: %w", err)
	}
	if !result.Valid() {
		var problems []string
		for _, e := range result.Errors() {
			problems = append(problems, e.String())
		}
		return fmt.Errorf("values do not match values.schema.json:\n- %s", strings.Join(problems, "\n- "))
	}
	return nil
}
