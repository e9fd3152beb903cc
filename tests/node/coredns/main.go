// Command coredns is CoreDNS v1.15.0 with only the plugins the test node's Corefile
// uses (see Corefile.example), instead of every plugin of the upstream build (whose
// cloud SDKs make a cold build take ~9 minutes). Built by tests/node/build.sh.
//
// This is CoreDNS's documented way to build a subset: import coremain, the dnsserver
// and the wanted plugin packages, and set the directive list (execution order, a
// subsequence of upstream's core/dnsserver/zdirectives.go).
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
)

// In upstream's order: a plugin sees the effects of the ones after it.
var directives = []string{
	"reload",
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"template",
	"kubernetes",
}

func init() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func main() {
	coremain.Run()
}
