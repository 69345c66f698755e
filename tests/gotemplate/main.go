// Renders templates with Go's own text/template, for tests/test_template_against_go.py.
//
// Standard input: a JSON array of cases {kind, filter, template, data}; standard output: a
// JSON array of results {ok, output, error}, one per case, in order. The data types mirror
// SkyWalking Rover's template contexts (pkg/process/finders/{base,kubernetes,scanner}/
// template.go): Kubernetes filters see FilterContext, Kubernetes names EntityRenderContext,
// the regex scanner's names TemplateContext. Rover's equalsOrDefault is registered too.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/template"
)

type Case struct {
	Kind     string `json:"kind"` // "kubernetes" or "scanner"
	Filter   bool   `json:"filter"`
	Template string `json:"template"`
	Data     Data   `json:"data"`
}

type Result struct {
	OK     bool   `json:"ok"`
	Output string `json:"output"`
	Error  string `json:"error"`
}

type Data struct {
	Pod       PodData     `json:"pod"`
	Container string      `json:"container"` // the name of the pod's container of the process
	Process   ProcessData `json:"process"`
	Rover     RoverData   `json:"rover"`
	Finder    FinderData  `json:"finder"`
}

type ContainerData struct {
	Name string      `json:"name"`
	ID   string      `json:"id"`
	Env  [][2]string `json:"env"`
}

type PodData struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Node        string            `json:"node"`
	Labels      map[string]string `json:"labels"`
	Spec        []string          `json:"spec_containers"`
	Containers  []ContainerData   `json:"containers"`
	ServiceName string            `json:"service_name"`
	Owners      map[string]string `json:"owners"` // kind -> name
}

type ProcessData struct {
	Pid         int32  `json:"pid"`
	ExeName     string `json:"exe_name"`
	ExeFilePath string `json:"exe_file_path"`
	CommandLine string `json:"command_line"`
	WorkDir     string `json:"work_dir"`
}

type RoverData struct {
	InstanceID string            `json:"instance_id"`
	HostName   string            `json:"host_name"`
	IPv4       map[string]string `json:"ipv4"`
	IPv6       map[string]string `json:"ipv6"`
}

type FinderData struct {
	Layer    string `json:"layer"`
	MatchCmd string `json:"match_cmd"`
}

// --- base: .Rover and .Process -----------------------------------------------------------

type TemplateRover struct{ d RoverData }

func (t *TemplateRover) InstanceID() string { return t.d.InstanceID }
func (t *TemplateRover) HostName() string   { return t.d.HostName }
func (t *TemplateRover) HostIPV4(name string) (string, error) {
	if v4 := t.d.IPv4[name]; v4 != "" {
		return v4, nil
	}
	return "", fmt.Errorf("could not found the ip v4 address from %s", name)
}
func (t *TemplateRover) HostIPV6(name string) (string, error) {
	if v6 := t.d.IPv6[name]; v6 != "" {
		return v6, nil
	}
	return "", fmt.Errorf("could not found the ip v6 address from %s", name)
}

type TemplateProcess struct{ d ProcessData }

func (p *TemplateProcess) Pid() int32                   { return p.d.Pid }
func (p *TemplateProcess) ExeName() (string, error)     { return p.d.ExeName, nil }
func (p *TemplateProcess) ExeFilePath() (string, error) { return p.d.ExeFilePath, nil }
func (p *TemplateProcess) CommandLine() (string, error) { return p.d.CommandLine, nil }
func (p *TemplateProcess) WorkDir() (string, error)     { return p.d.WorkDir, nil }

// --- kubernetes: .Pod and .Container -----------------------------------------------------

type TemplatePod struct{ d PodData }

func (p *TemplatePod) Name() string      { return p.d.Name }
func (p *TemplatePod) Namespace() string { return p.d.Namespace }
func (p *TemplatePod) Node() string      { return p.d.Node }
func (p *TemplatePod) ServiceName() string {
	return p.d.ServiceName
}
func (p *TemplatePod) FindContainer(name string) (*TemplateContainer, error) {
	for _, c := range p.d.Containers {
		if c.Name == name {
			return &TemplateContainer{c}, nil
		}
	}
	return nil, fmt.Errorf("could not found the container")
}
func (p *TemplatePod) LabelValue(names, def string) (string, error) {
	for _, name := range strings.Split(names, ",") {
		if val := p.d.Labels[name]; val != "" {
			return val, nil
		}
	}
	return def, nil
}
func (p *TemplatePod) OwnerName(kindNames string) (string, error) {
	kinds := strings.Split(kindNames, ",")
	for _, name := range kinds {
		if strings.EqualFold(name, "service") {
			if s := p.ServiceName(); s != "" {
				return s, nil
			}
			continue
		}
		for kind, owner := range p.d.Owners {
			if strings.EqualFold(kind, name) {
				return owner, nil
			}
		}
	}
	return "", fmt.Errorf("could not found owner in %v", kinds)
}

type TemplatePodJudgment struct{ *TemplatePod }

func (t *TemplatePodJudgment) HasContainer(name string) bool {
	for _, c := range t.d.Spec {
		if c == name {
			return true
		}
	}
	return false
}
func (t *TemplatePodJudgment) HasServiceName() bool { return t.ServiceName() != "" }

type TemplateContainer struct{ d ContainerData }

func (c *TemplateContainer) Name() string { return c.d.Name }
func (c *TemplateContainer) ID() string   { return c.d.ID }
func (c *TemplateContainer) EnvValue(names string) (string, error) {
	wanted := strings.Split(names, ",")
	for _, e := range c.d.Env {
		for _, name := range wanted {
			if e[0] == name {
				return e[1], nil
			}
		}
	}
	return "", fmt.Errorf("could not found matches environment, want names: %v", wanted)
}

type FilterContext struct {
	Process   *TemplateProcess
	Pod       *TemplatePodJudgment
	Container *TemplateContainer
}

type EntityRenderContext struct {
	Rover     *TemplateRover
	Process   *TemplateProcess
	Pod       *TemplatePod
	Container *TemplateContainer
}

// --- scanner: .Finder --------------------------------------------------------------------

type TemplateFinder struct {
	d   FinderData
	cmd string
}

func (t *TemplateFinder) Layer() string { return t.d.Layer }
func (t *TemplateFinder) RegexMatchGroup(inx int) (string, error) {
	submatch := regexp.MustCompile(t.d.MatchCmd).FindStringSubmatch(t.cmd)
	if len(submatch) == 0 || inx+1 >= len(submatch) { // Rover's own bound, kept as it is
		return "", fmt.Errorf("could not find match")
	}
	return submatch[inx], nil
}

type TemplateContext struct {
	Rover   *TemplateRover
	Process *TemplateProcess
	Finder  *TemplateFinder
}

func equalsOrDefault(eq, ifSame, needs string) string {
	if needs == eq {
		return ifSame
	}
	return needs
}

func context(c Case) interface{} {
	d := c.Data
	process := &TemplateProcess{d.Process}
	rover := &TemplateRover{d.Rover}
	if c.Kind == "scanner" {
		return &TemplateContext{rover, process, &TemplateFinder{d.Finder, d.Process.CommandLine}}
	}
	pod := &TemplatePod{d.Pod}
	var container *TemplateContainer
	for _, one := range d.Pod.Containers {
		if one.Name == d.Container {
			container = &TemplateContainer{one}
		}
	}
	if c.Filter {
		return &FilterContext{process, &TemplatePodJudgment{pod}, container}
	}
	return &EntityRenderContext{rover, process, pod, container}
}

func run(c Case) Result {
	source := c.Template
	if c.Filter { // as Rover renders a filter
		source = "{{" + c.Template + "}}"
	}
	funcs := template.FuncMap{"equalsOrDefault": equalsOrDefault}
	tmpl, err := template.New("case").Funcs(funcs).Parse(source)
	if err != nil {
		return Result{Error: err.Error()}
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, context(c)); err != nil {
		return Result{Error: err.Error()}
	}
	if !c.Filter {
		return Result{OK: true, Output: out.String()}
	}
	passes, err := strconv.ParseBool(out.String())
	if err != nil {
		return Result{Error: err.Error()}
	}
	return Result{OK: true, Output: strconv.FormatBool(passes)}
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate: bad input:", err)
		os.Exit(2)
	}
	results := make([]Result, len(cases))
	for i, c := range cases {
		results[i] = run(c)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate:", err)
		os.Exit(1)
	}
}
