// kubectl's YAML reader, for tests/yaml11.rs. The versions are those that
// k8s.io/kubernetes v1.35.4 builds kubectl with (tests/cluster/go.mod): change them
// together with tests/cluster/versions.env, then `go mod tidy` here.
module tracehook.dev/tests/yaml11

go 1.25.0

require k8s.io/apimachinery v0.35.4

require (
	go.yaml.in/yaml/v2 v2.4.3 // indirect
	sigs.k8s.io/json v0.0.0-20250730193827-2d320260d730 // indirect
	sigs.k8s.io/yaml v1.6.0 // indirect
)
