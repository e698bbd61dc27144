// Command etcd is etcd built from its published Go module, for the local
// control plane of latchkey's tests (Debian's etcd is too old for Kubernetes 1.37).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
