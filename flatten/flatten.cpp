#include "flatten/flatten.hpp"

#include <utility>

namespace wrenn::flatten {

Result<FlattenStats> flatten(const std::string& origin_path, const std::string& cow_path,
                             const std::string& out) {
    const std::string action = "flatten " + origin_path + " + " + cow_path + " into " + out;
    auto origin = open_read_only(origin_path);
    if (!origin) {
        return std::move(origin).error().within(action);
    }
    auto cow = open_read_only(cow_path);
    if (!cow) {
        return std::move(cow).error().within(action);
    }
    // Everything about the store is checked before an output file exists.
    auto store = read_exception_store(pread_reader(cow->fd.get(), cow_path), cow->size,
                                      origin->size, cow_path);
    if (!store) {
        return std::move(store).error().within(action);
    }
    auto output = PendingOutput::create(out);
    if (!output) {
        return std::move(output).error().within(action);
    }
    auto method = copy_image(*origin, output->fd());
    if (!method) {
        return std::move(method).error().within(action);
    }
    std::size_t applied = 0;
    if (!store->empty) {
        auto n = apply_exceptions(cow->fd.get(), output->fd(), store->exceptions,
                                  store->chunk_bytes(), origin->size);
        if (!n) {
            return std::move(n).error().within(action);
        }
        applied = *n;
    }
    if (auto committed = output->commit(); !committed) {
        return std::move(committed).error().within(action);
    }
    return FlattenStats{origin->size, applied, *method};
}

}  // namespace wrenn::flatten
