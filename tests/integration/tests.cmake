# One line per group of kernel tests; see wrenn_kernel_test in ../CMakeLists.txt.
wrenn_kernel_test(NAME "harness" TAGS "[harness]")
wrenn_kernel_test(NAME "loop" TAGS "[loop]")
wrenn_kernel_test(NAME "tcmu" TAGS "[tcmu]")
wrenn_kernel_test(NAME "flatten" TAGS "[flatten]")
wrenn_kernel_test(NAME "agent lifecycle" SCRIPT integration/agent_lifecycle.sh)
wrenn_kernel_test(NAME "agent concurrency" SCRIPT integration/agent_concurrency.sh)
wrenn_kernel_test(NAME "agent crash" SCRIPT integration/agent_crash.sh TIMEOUT 1800)
wrenn_kernel_test(NAME "agent faults" SCRIPT integration/agent_faults.sh)
