// On-CPU workload: main.main -> main.work (the hot leaf).
// Usage: hot_go [seconds]  (no argument: run forever). Prints "ready" once started.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// sink is a global, so the loop result is observable and cannot be folded away.
var sink uint64 = 1

//go:noinline
func publish(x uint64) { sink = x }

// work is the hot leaf. Calling publish after the loop gives it a stack frame, so Go sets
// up the frame pointer (frameless leaves would hide main.main from frame-pointer unwinding).
//
//go:noinline
func work() {
	x := sink
	for i := 0; i < 1000000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	publish(x)
}

func main() {
	seconds := 0.0
	if len(os.Args) > 1 {
		seconds, _ = strconv.ParseFloat(os.Args[1], 64)
	}
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	fmt.Fprintln(os.Stdout, "ready") // os.Stdout is unbuffered
	for seconds <= 0 || time.Now().Before(deadline) {
		work()
	}
}
