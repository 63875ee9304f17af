package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// File is one file of a set written together.
type File struct {
	Name string // base name within the directory
	Data []byte
	Mode os.FileMode
}

// WriteFile replaces path with data, durably.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return WriteFiles(filepath.Dir(path), File{Name: filepath.Base(path), Data: data, Mode: mode})
}

// WriteFiles replaces the files in dir, which must exist. Every file is
// written and synced under a temporary name before any is renamed into
// place, so a failure while writing changes nothing.
func WriteFiles(dir string, files ...File) (err error) {
	if fi, err := os.Stat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	tmps := make([]string, 0, len(files))
	defer func() {
		for _, t := range tmps {
			if rerr := os.Remove(t); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
				err = rerr
			}
		}
	}()
	for _, f := range files {
		if f.Name == "" || filepath.Base(f.Name) != f.Name {
			return fmt.Errorf("atomicfile: %q is not a base name", f.Name)
		}
		t, err := writeTemp(dir, f)
		if t != "" {
			tmps = append(tmps, t)
		}
		if err != nil {
			return err
		}
	}
	for i, f := range files {
		if err := os.Rename(tmps[i], filepath.Join(dir, f.Name)); err != nil {
			return err
		}
	}
	return syncDir(dir)
}

// Remove removes path durably.
func Remove(path string) error {
	if err := os.Remove(path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func writeTemp(dir string, f File) (string, error) {
	tmp, err := os.CreateTemp(dir, "."+f.Name+".*")
	if err != nil {
		return "", err
	}
	err = tmp.Chmod(f.Mode)
	if err == nil {
		_, err = tmp.Write(f.Data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	return tmp.Name(), err
}
