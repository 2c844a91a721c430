# One line per group of kernel tests; see wrenn_kernel_test in ../CMakeLists.txt.
wrenn_kernel_test(NAME "harness" TAGS "[harness]")
wrenn_kernel_test(NAME "loop" TAGS "[loop]")
wrenn_kernel_test(NAME "dm" TAGS "[dm]")
