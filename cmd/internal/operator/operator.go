// Package operator names the person behind an operator verb for audit
// records and logs.
package operator

import (
	"os"
	"os/user"
	"strconv"
)

// Actor names who ran this process: "operator:<user>,uid=N,pid=P" (the
// uid alone when the user database has no entry).
func Actor() string {
	name := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		name = u.Username + ",uid=" + u.Uid
	}
	return "operator:" + name + ",pid=" + strconv.Itoa(os.Getpid())
}
