// fsync_jitter: what a stream of fdatasync calls does to the scheduling of OTHER threads.
//
// One thread appends 4 KiB and fdatasyncs in a loop, at most once per --interval-us (0 = back to
// back), pinned to the last CPU; a second thread, pinned to CPU 0, only sleeps until a deadline
// every 25 µs and records how late it wakes. Printed per setting: fsyncs/s, the sleeper's
// lateness (p50, p99, max), the share of 100 ms windows in which it woke more than 2 ms late, and
// the steal time /proc/stat reports meanwhile.
//
// On a VM whose host emulates the disk, every fsync costs host CPU that is charged to the VM;
// past some rate the whole VM is descheduled for milliseconds at a time, and every thread sees it
// (also one that does no I/O, on the other core). ledgerd's --sync-interval-min-us keeps its WAL
// syncs under that rate (tools/bench/README.md has this machine's figures).
//
//   build/bin/fsync_jitter [--dir DIR] [--seconds 4] [--interval-us 0,300,1000]
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

void Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort
}

// Steal time of all CPUs, in clock ticks (the 8th value of /proc/stat's "cpu" line).
long long StealTicks() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  long long v[8] = {};
  in >> cpu;
  for (long long& x : v) in >> x;
  return v[7];
}

struct Result {
  double fsyncs_per_s = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
  int late_windows = 0, windows = 0;
  double steal_s = 0;
};

Result Run(const std::string& dir, double seconds, long interval_us, bool syncing) {
  const int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::atomic<bool> stop{false};
  std::atomic<long> fsyncs{0};
  std::thread syncer;
  std::string path = dir + "/.fsync-jitter-XXXXXX";
  int fd = -1;
  if (syncing) {
    fd = ::mkstemp(path.data());
    if (fd < 0) {
      std::perror("mkstemp");
      std::exit(1);
    }
    syncer = std::thread([&] {
      Pin(cpus - 1);
      const std::string block(4096, 'x');
      Clock::time_point last = Clock::now() - std::chrono::seconds(1);
      while (!stop.load()) {
        const auto due = last + std::chrono::microseconds(interval_us);
        if (Clock::now() < due) std::this_thread::sleep_until(due);
        last = Clock::now();
        if (::write(fd, block.data(), block.size()) < 0 || ::fdatasync(fd) != 0) {
          std::perror("write/fdatasync");
          std::exit(1);
        }
        fsyncs++;
      }
    });
  }
  const long long steal_before = StealTicks();
  std::vector<std::vector<double>> windows(static_cast<size_t>(seconds * 10) + 1);
  std::vector<double> all;
  {
    std::thread sleeper([&] {
      Pin(0);
      const auto start = Clock::now();
      const auto period = std::chrono::microseconds(25);
      for (long i = 0;; ++i) {
        const auto due = start + i * period;
        if (due - start >= std::chrono::duration<double>(seconds)) break;
        std::this_thread::sleep_until(due);
        const double late = std::chrono::duration<double, std::milli>(Clock::now() - due).count();
        windows[static_cast<size_t>((due - start) / std::chrono::milliseconds(100))].push_back(late);
        all.push_back(late);
      }
    });
    sleeper.join();
  }
  stop = true;
  if (syncer.joinable()) syncer.join();
  if (fd >= 0) {
    ::close(fd);
    ::unlink(path.c_str());
  }
  Result r;
  r.steal_s = static_cast<double>(StealTicks() - steal_before) / static_cast<double>(sysconf(_SC_CLK_TCK));
  r.fsyncs_per_s = static_cast<double>(fsyncs.load()) / seconds;
  std::sort(all.begin(), all.end());
  if (!all.empty()) {
    r.p50_ms = all[all.size() / 2];
    r.p99_ms = all[all.size() * 99 / 100];
    r.max_ms = all.back();
  }
  for (const auto& w : windows) {
    if (w.empty()) continue;
    r.windows++;
    if (*std::max_element(w.begin(), w.end()) > 2.0) r.late_windows++;
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = ".";
  double seconds = 4;
  std::string intervals = "0,300,1000";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--dir") {
      dir = argv[i + 1];
    } else if (flag == "--seconds") {
      seconds = std::atof(argv[i + 1]);
    } else if (flag == "--interval-us") {
      intervals = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: %s [--dir DIR] [--seconds 4] [--interval-us 0,300,1000]\n",
                   argv[0]);
      return 64;
    }
  }
  if (argc % 2 == 0 || seconds <= 0) {
    std::fprintf(stderr, "usage: %s [--dir DIR] [--seconds 4] [--interval-us 0,300,1000]\n",
                 argv[0]);
    return 64;
  }
  std::printf("%-28s %9s %9s %9s %9s %14s %8s\n", "fdatasync loop", "fsyncs/s", "p50 ms",
              "p99 ms", "max ms", "windows >2 ms", "steal s");
  auto print = [](const std::string& name, const Result& r) {
    std::printf("%-28s %9.0f %9.3f %9.3f %9.2f %8d of %3d %8.2f\n", name.c_str(), r.fsyncs_per_s,
                r.p50_ms, r.p99_ms, r.max_ms, r.late_windows, r.windows, r.steal_s);
    std::fflush(stdout);
  };
  print("none (sleeper alone)", Run(dir, seconds, 0, /*syncing=*/false));
  std::stringstream list(intervals);
  for (std::string item; std::getline(list, item, ',');) {
    const long us = std::atol(item.c_str());
    if (us < 0 || us > 1'000'000) {
      std::fprintf(stderr, "--interval-us: 0 to 1000000 each, got %s\n", item.c_str());
      return 64;
    }
    print(us == 0 ? "back to back" : "at most one per " + std::to_string(us) + " us",
          Run(dir, seconds, us, /*syncing=*/true));
  }
  return 0;
}
