// Command palisade is the operator CLI. Its verbs mirror spire-server's where
// they exist (entry, bundle, x509 mint, jwt mint, healthcheck); they talk to
// palisade-server over its admin socket. ceremony, audit verify and audit
// reanchor work on the appliance's HSM and files directly.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/palisade-id/palisade/ca/admin"
)

// command is one "noun verb" of the CLI.
type command struct {
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what every command may use.
type env struct {
	stdout, stderr io.Writer
	socket         string
}

func (e *env) client() *admin.Client { return admin.NewClient(e.socket) }

var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, env *env, args []string) error) {
	commands[name] = command{summary: summary, run: run}
}

// errUsage marks a usage error: exit status 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, socket: os.Getenv("PALISADE_ADMIN_SOCKET")}
	if e.socket == "" {
		e.socket = "/run/palisade/admin.sock"
	}
	// Global flag before the verb.
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		a := strings.TrimLeft(args[0], "-")
		switch {
		case a == "socketPath" && len(args) > 1:
			e.socket, args = args[1], args[2:]
		case strings.HasPrefix(a, "socketPath="):
			e.socket, args = strings.TrimPrefix(a, "socketPath="), args[1:]
		case a == "h" || a == "help":
			usage(stdout)
			return 0
		default:
			fmt.Fprintf(stderr, "palisade: unknown global flag %s\n", args[0])
			return 2
		}
	}
	name, rest := lookup(args)
	cmd, ok := commands[name]
	if !ok {
		if len(args) == 0 {
			usage(stderr)
		} else {
			fmt.Fprintf(stderr, "palisade: unknown command %q (see palisade -h)\n", strings.Join(args, " "))
		}
		return 2
	}
	if err := cmd.run(ctx, e, rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "palisade %s: %v\n", name, err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

// lookup matches the longest registered command ("entry create" before
// "entry").
func lookup(args []string) (string, []string) {
	for n := min(len(args), 3); n > 0; n-- {
		name := strings.Join(args[:n], " ")
		if _, ok := commands[name]; ok {
			return name, args[n:]
		}
	}
	return "", args
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: palisade [-socketPath PATH] <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-22s %s\n", n, commands[n].summary)
	}
}

// flags returns a FlagSet that reports errors to e.stderr and wraps them
// as usage errors.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("palisade "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// flagSet lets a command add flags to a shared helper's FlagSet.
type flagSet struct{ *flag.FlagSet }
