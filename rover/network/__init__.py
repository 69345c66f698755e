"""Network profiling (NETWORK tasks) and the HTTP monitors of continuous profiling."""
