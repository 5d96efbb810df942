package main

import (
	"flag"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/qtune/qtune/train"
)

// deploy/'s manifests, checked as far as this machine can: the Kubeflow
// MPIJob parses, has a launcher and workers whose count matches mpirun's
// -np, and its qtune command line is accepted by qtune train's own flag
// parser and config check; the Slurm script passes bash -n and names only
// flags qtune train has.
func TestDeployManifests(t *testing.T) {
	b, err := os.ReadFile("../../deploy/kubeflow-mpijob.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var job struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Spec       struct {
			SlotsPerWorker  int `yaml:"slotsPerWorker"`
			MPIReplicaSpecs map[string]struct {
				Replicas int `yaml:"replicas"`
				Template struct {
					Spec struct {
						Containers []struct {
							Command []string `yaml:"command"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"mpiReplicaSpecs"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &job); err != nil {
		t.Fatal(err)
	}
	if job.APIVersion != "kubeflow.org/v2beta1" || job.Kind != "MPIJob" {
		t.Fatalf("%s %s", job.APIVersion, job.Kind)
	}
	l, w := job.Spec.MPIReplicaSpecs["Launcher"], job.Spec.MPIReplicaSpecs["Worker"]
	if l.Replicas != 1 || w.Replicas < 2 || len(l.Template.Spec.Containers) != 1 {
		t.Fatalf("launcher %d, workers %d", l.Replicas, w.Replicas)
	}
	cmd := l.Template.Spec.Containers[0].Command
	i := slices.Index(cmd, "-np")
	if cmd[0] != "mpirun" || i < 0 || cmd[i+1] != strconv.Itoa(w.Replicas*job.Spec.SlotsPerWorker) {
		t.Errorf("mpirun %v for %d workers × %d slots", cmd, w.Replicas, job.Spec.SlotsPerWorker)
	}
	j := slices.Index(cmd, "train")
	if j < 0 || !strings.HasSuffix(cmd[j-1], "qtune") {
		t.Fatalf("no qtune train in %v", cmd)
	}
	cfg := train.Defaults()
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	trainFlags(fs, &cfg)
	if err := fs.Parse(cmd[j+1:]); err != nil {
		t.Fatalf("qtune train rejects the MPIJob's flags: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the MPIJob's configuration: %v", err)
	}

	if out, err := exec.Command("bash", "-n", "../../deploy/slurm.sbatch").CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	sb, err := os.ReadFile("../../deploy/slurm.sbatch")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { known[f.Name] = true })
	body := string(sb)[strings.Index(string(sb), `"$QTUNE" train`):]
	for _, m := range regexp.MustCompile(`--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(body, -1) {
		if !known[m[1]] {
			t.Errorf("the Slurm script passes --%s, which qtune train does not have", m[1])
		}
	}
}
