# One line per group of kernel tests; see wrenn_kernel_test in ../CMakeLists.txt.
# The longest first: with no timings on record (a fresh CI machine) ctest starts them in this
# order, and the groups that run beside it fill the time.
wrenn_kernel_test(NAME "agent crash" SCRIPT integration/agent_crash.sh TIMEOUT 2400)
wrenn_kernel_test(NAME "power cut" HOST_SCRIPT integration/power_cut.sh TIMEOUT 1800)
# Builds the .deb (scripts/package --nocheck), then boots systemd as PID 1 twice.
wrenn_kernel_test(NAME "package boot" HOST_SCRIPT integration/package_boot.sh TIMEOUT 2400)
wrenn_kernel_test(NAME "harness" TAGS "[harness]")
wrenn_kernel_test(NAME "loop" TAGS "[loop]")
wrenn_kernel_test(NAME "dm" TAGS "[dm]")
wrenn_kernel_test(NAME "tcmu" TAGS "[tcmu]")
wrenn_kernel_test(NAME "flatten" TAGS "[flatten]")
wrenn_kernel_test(NAME "agent lifecycle" SCRIPT integration/agent_lifecycle.sh)
wrenn_kernel_test(NAME "agent lifecycle (no udev)" SCRIPT integration/agent_lifecycle.sh NO_UDEV)
# Requests served on two CPUs at once, not only interleaved on one.
wrenn_kernel_test(NAME "agent concurrency" SCRIPT integration/agent_concurrency.sh CPUS 2)
wrenn_kernel_test(NAME "agent faults" SCRIPT integration/agent_faults.sh)
wrenn_kernel_test(NAME "agent tcmu" SCRIPT integration/agent_tcmu.sh)
wrenn_kernel_test(NAME "agent templates" SCRIPT integration/agent_templates.sh)
wrenn_kernel_test(NAME "agent state dirs" SCRIPT integration/agent_state_dirs.sh)
wrenn_kernel_test(NAME "agent space" SCRIPT integration/agent_space.sh)
wrenn_kernel_test(NAME "agent fork" SCRIPT integration/agent_fork.sh)
wrenn_kernel_test(NAME "agent transfer" SCRIPT integration/agent_transfer.sh)
wrenn_kernel_test(NAME "agent template api" SCRIPT integration/agent_template_api.sh)
wrenn_kernel_test(NAME "agent slow clients" SCRIPT integration/agent_slow_clients.sh)
