# flatten_bench: sets up a template + persistent dm-snapshot for scripts/bench-flatten and runs
# the flatten command; scripts/bench-flatten times it against dd of the snapshot device.
add_executable(flatten_bench ${CMAKE_CURRENT_LIST_DIR}/flatten_bench.cpp)
target_link_libraries(flatten_bench PRIVATE wrenn_agent_core PkgConfig::DEVMAPPER)
