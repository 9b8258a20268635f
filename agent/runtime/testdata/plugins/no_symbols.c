// Not a delegate plugin at all: a shared library without the entry points.
int outpost_not_a_plugin(void) { return 42; }
