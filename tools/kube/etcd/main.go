// Command etcd is etcd's server, built from the version k8s.io/kubernetes requires, for meshcp's tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
