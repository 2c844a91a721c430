#include "agent/table/transfer_slots.hpp"

namespace wrenn::agent {

TransferSlots::TransferSlots(std::size_t max_transfers)
    : max_(max_transfers), pool_(max_transfers) {}

TransferSlots::~TransferSlots() {
    join();
}

std::optional<TransferSlots::Slot> TransferSlots::try_acquire() {
    std::size_t now = active_.load();
    do {
        if (now >= max_) {
            return std::nullopt;
        }
    } while (!active_.compare_exchange_weak(now, now + 1));
    return Slot(static_cast<void*>(this),
                [](void* self) { static_cast<TransferSlots*>(self)->active_.fetch_sub(1); });
}

void TransferSlots::join() {
    pool_.join();
}

}  // namespace wrenn::agent
