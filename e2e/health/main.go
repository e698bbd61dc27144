// e2e/health: what Argo CD and Flux say about latchkey's objects, computed
// by the libraries they embed, for tests/gitops_health.rs.
//
//	health SCRIPT.lua < objects.json > verdicts.json
//
// objects.json is a JSON array of objects (as `kubectl get -o json` prints
// them); the answer is one verdict per object, in order:
//
//	{"lua": {"status": "Healthy", "message": "…"}, "kstatus": {"status": "Current", "message": "…"}}
//
// The Lua side runs SCRIPT as Argo CD runs a resource.customizations.health
// script: github.com/yuin/gopher-lua, only the base, package and table
// libraries open (Argo CD's default, without useOpenLibs; it adds a reduced
// os library, which latchkey's script does not use), the object as the
// global `obj` (maps become tables, lists sequences, numbers Lua numbers),
// a 1 s deadline, and the returned table read as {status, message}; a
// status that is not one of Argo CD's health codes is an error.
// The kstatus side is sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute,
// what Flux's health checks call.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

type answer struct {
	Lua     verdict `json:"lua"`
	Kstatus verdict `json:"kstatus"`
}

// Argo CD's health codes.
var argoHealth = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: health SCRIPT.lua < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(1)
	}
	var objects []map[string]interface{}
	if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
		fmt.Fprintln(os.Stderr, "health: stdin is not a JSON array of objects:", err)
		os.Exit(1)
	}
	answers := make([]answer, 0, len(objects))
	for _, obj := range objects {
		answers = append(answers, answer{Lua: argo(string(script), obj), Kstatus: kstatus(obj)})
	}
	if err := json.NewEncoder(os.Stdout).Encode(answers); err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(1)
	}
}

func argo(script string, obj map[string]interface{}) verdict {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return verdict{Error: err.Error()}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return verdict{Error: err.Error()}
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return verdict{Error: fmt.Sprintf("the script returned %s, not a table", l.Get(-1).Type())}
	}
	v := verdict{Status: lua.LVAsString(table.RawGetString("status")), Message: lua.LVAsString(table.RawGetString("message"))}
	if !argoHealth[v.Status] {
		v.Error = fmt.Sprintf("%q is not an Argo CD health status", v.Status)
	}
	return v
}

// toLua turns decoded JSON into Lua values, as Argo CD does for `obj`.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		t := l.NewTable()
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]interface{}:
		t := l.NewTable()
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", value))
	}
}

func kstatus(obj map[string]interface{}) verdict {
	// Through JSON again, so that numbers are int64 as in a client's
	// unstructured objects (what kstatus is written for).
	raw, err := json.Marshal(obj)
	if err != nil {
		return verdict{Error: err.Error()}
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		return verdict{Error: err.Error()}
	}
	result, err := status.Compute(u)
	if err != nil {
		return verdict{Error: err.Error()}
	}
	return verdict{Status: result.Status.String(), Message: result.Message}
}
