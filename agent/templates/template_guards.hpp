#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace wrenn::agent {

// Who works on a template name now, so that a delete or an upload never races a create over
// the same image. A create (or an import) holds the name shared from the moment it picks the
// image until its record is written; an upload or a delete holds it alone. Holds are taken
// without waiting: a name held the other way is refused (409 template_busy), never queued.
// Thread-safe.
class TemplateGuards {
  public:
    class Hold;

    // A shared hold on `name` unless an upload or a delete holds it alone.
    [[nodiscard]] std::optional<Hold> share(const std::string& name);
    // The only hold on `name` unless anyone holds it.
    [[nodiscard]] std::optional<Hold> own(const std::string& name);
    // What the sole holder of `name` does to it ("uploaded", "deleted"), or "" when nobody
    // holds it alone.
    [[nodiscard]] std::string owner(const std::string& name) const;

  private:
    struct Users {
        std::size_t shared = 0;
        std::string owner;  // what holds the name alone; empty: nobody
    };
    void release(const std::string& name, bool alone);

    mutable std::mutex mu_;
    std::map<std::string, Users> names_;
};

// One hold; let go when destroyed. Move-only.
class TemplateGuards::Hold {
  public:
    Hold(Hold&& other) noexcept;
    Hold& operator=(Hold&& other) noexcept;
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold();

    // What the sole holder does to the name, for owner(): "uploaded", "deleted".
    void describe(std::string doing);

  private:
    friend class TemplateGuards;
    Hold(TemplateGuards* guards, std::string name, bool alone)
        : guards_(guards), name_(std::move(name)), alone_(alone) {}
    TemplateGuards* guards_ = nullptr;
    std::string name_;
    bool alone_ = false;
};

}  // namespace wrenn::agent
