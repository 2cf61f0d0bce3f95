// Fused training-mode batch norm + LeakyReLU (ReLU: slope 0) for channels_last CPU tensors (fp32 or bf16 storage).
//
// The tensor is read as M rows x C channels (M = N*H*W), channels contiguous: the layout of a
// channels_last (N, C, H, W) tensor. Separately, PyTorch's CPU batch norm and LeakyReLU make ~13
// passes over the tensor per layer (forward + backward); this makes 8: forward = statistics pass +
// normalise-and-activate pass; backward = one pass for the two reductions + one pass for dx.
// The activation's mask is recomputed from x in the backward (bit-identical arithmetic to the
// forward), so only x is saved, as PyTorch's batch norm saves it anyway.
//
// Statistics are accumulated in double per thread (then summed in a fixed order: deterministic for
// a given thread count); everything else in float. bf16 <-> float conversion is done by hand
// (round to nearest even, NaN kept NaN) so that the loops vectorise.
//
// Plain C ABI (loaded with ctypes), threads from OpenMP (PyTorch's pool) or std::thread: no PyTorch headers
// to compile against.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

inline float bf16_to_f(uint16_t v) {
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t f_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : r);
}

template <typename T> inline float load(const T* p, int64_t i);
template <> inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <> inline float load<uint16_t>(const uint16_t* p, int64_t i) { return bf16_to_f(p[i]); }

template <typename T> inline void store(T* p, int64_t i, float v);
template <> inline void store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <> inline void store<uint16_t>(uint16_t* p, int64_t i, float v) { p[i] = f_to_bf16(v); }

// Row kernels: every pointer __restrict, so the compiler vectorises the channel loop without
// run-time alias checks (with lambdas capturing the pointers, GCC fell back to scalar code).
template <typename T>
inline void row_stats(const T* __restrict xr, const float* __restrict k, float* __restrict s, float* __restrict q,
                      int64_t C) {
    for (int64_t c = 0; c < C; ++c) {
        float v = load(xr, c) - k[c];
        s[c] += v;
        q[c] += v * v;
    }
}

template <typename T>
inline void row_norm_act(const T* __restrict xr, T* __restrict yr, const float* __restrict mu,
                         const float* __restrict sc, const float* __restrict b, float slope, int64_t C) {
    for (int64_t c = 0; c < C; ++c) {
        float z = (load(xr, c) - mu[c]) * sc[c] + b[c];
        store(yr, c, z > 0.f ? z : z * slope);
    }
}

template <typename T>
inline void row_grad_sums(const T* __restrict xr, const T* __restrict gr, const float* __restrict sc,
                          const float* __restrict b, const float* __restrict mu, float slope, float* __restrict s,
                          float* __restrict q, int64_t C) {
    for (int64_t c = 0; c < C; ++c) {
        float d = load(xr, c) - mu[c];
        float z = d * sc[c] + b[c];
        float g = load(gr, c);
        float dz = z > 0.f ? g : g * slope;
        s[c] += dz;
        q[c] += dz * d;
    }
}

template <typename T>
inline void row_grad_input(const T* __restrict xr, const T* __restrict gr, T* __restrict dr,
                           const float* __restrict mu, const float* __restrict sc, const float* __restrict b,
                           const float* __restrict p1, const float* __restrict p2, const float* __restrict p3, float slope, int64_t C) {
    for (int64_t c = 0; c < C; ++c) {
        float d = load(xr, c) - mu[c];
        float z = d * sc[c] + b[c];
        float g = load(gr, c);
        float dz = z > 0.f ? g : g * slope;
        store(dr, c, p1[c] * dz + p2[c] * d + p3[c]);
    }
}

// Run f(thread_index, row_begin, row_end) over [0, M) in nthreads contiguous chunks (nthreads from
// effective_threads). With OpenMP (-fopenmp) the threads are the process's OpenMP pool:
// PyTorch's own, already running (libgomp is loaded once per process), so no thread start-up and no
// second pool spinning against PyTorch's on the same cores; without it, std::thread per call.
template <typename F> void parallel_rows(int64_t M, int nthreads, F f) {
    int64_t chunk = (M + nthreads - 1) / nthreads;
    if (nthreads == 1) {
        f(0, 0, M);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num();
        int64_t b = t * chunk, e = b + chunk < M ? b + chunk : M;
        if (b < e) f(t, b, e);
    }
#else
    std::vector<std::thread> pool;
    pool.reserve(nthreads - 1);
    for (int t = 1; t < nthreads; ++t) {
        int64_t b = t * chunk, e = b + chunk < M ? b + chunk : M;
        pool.emplace_back([=, &f] { if (b < e) f(t, b, e); });
    }
    f(0, 0, chunk < M ? chunk : M);
    for (auto& th : pool) th.join();
#endif
}

inline int effective_threads(int64_t M, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (M < 4096 * nthreads) nthreads = static_cast<int>(M / 4096) > 0 ? static_cast<int>(M / 4096) : 1;
    return nthreads;
}

// Two per-channel sums over all M rows: row(i, s, q) adds row i's terms into the float arrays s, q.
// Float partial sums over blocks of 64 rows, flushed into one double array per thread, then summed over
// threads in a fixed order (deterministic for a given thread count) into sum_s, sum_q (double, C each).
template <typename Row>
void channel_sums(int64_t M, int64_t C, int nt, Row row, std::vector<double>& sum_s, std::vector<double>& sum_q) {
    std::vector<double> acc(static_cast<size_t>(2 * C * nt), 0.0);
    parallel_rows(M, nt, [&](int t, int64_t r0, int64_t r1) {
        double* s = acc.data() + 2 * C * t;
        double* q = s + C;
        std::vector<float> fs(C), fq(C);
        for (int64_t r = r0; r < r1; r += 64) {
            int64_t re = r + 64 < r1 ? r + 64 : r1;
            std::fill(fs.begin(), fs.end(), 0.f);
            std::fill(fq.begin(), fq.end(), 0.f);
            for (int64_t i = r; i < re; ++i) row(i, fs.data(), fq.data());
            for (int64_t c = 0; c < C; ++c) {
                s[c] += fs[c];
                q[c] += fq[c];
            }
        }
    });
    sum_s.assign(C, 0.0);
    sum_q.assign(C, 0.0);
    for (int t = 0; t < nt; ++t)
        for (int64_t c = 0; c < C; ++c) {
            sum_s[c] += acc[2 * C * t + c];
            sum_q[c] += acc[2 * C * t + C + c];
        }
}

template <typename T>
void forward(const T* __restrict x, T* __restrict y, int64_t M, int64_t C, const float* w, const float* b,
             float eps, float slope, float momentum, float* running_mean, float* running_var,
             float* save_mean, float* save_invstd, int nthreads) {
    int nt = effective_threads(M, nthreads);
    // sums of (x - k) and (x - k)^2 with k = the first row (shifted data: no cancellation when the
    // mean is large against the spread)
    std::vector<float> shiftk(C);
    for (int64_t c = 0; c < C; ++c) shiftk[c] = M > 0 ? load(x, c) : 0.f;
    const float* kk = shiftk.data();
    std::vector<double> sum_s, sum_q;
    channel_sums(M, C, nt, [&](int64_t i, float* s, float* q) { row_stats(x + i * C, kk, s, q, C); }, sum_s, sum_q);
    std::vector<float> scale(C);
    for (int64_t c = 0; c < C; ++c) {
        double s = sum_s[c], q = sum_q[c];
        double d = s / M;
        double mean = kk[c] + d;
        double var = q / M - d * d;
        if (var < 0) var = 0;
        double invstd = 1.0 / std::sqrt(var + eps);
        save_mean[c] = static_cast<float>(mean);
        save_invstd[c] = static_cast<float>(invstd);
        // z = (x - mean) * scale + b: no cancellation. From the saved (float) invstd, exactly as the backward
        // recomputes it, so that both passes see the same activation mask
        scale[c] = static_cast<float>(w[c] * static_cast<double>(save_invstd[c]));
        if (momentum >= 0.f && running_mean != nullptr) {
            double unbiased = M > 1 ? var * M / (M - 1) : var;
            running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
    }
    const float* sc = scale.data();
    parallel_rows(M, nt, [&](int, int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i) row_norm_act(x + i * C, y + i * C, save_mean, sc, b, slope, C);
    });
}

template <typename T>
void backward(const T* __restrict x, const T* __restrict dy, T* __restrict dx, int64_t M, int64_t C,
              const float* w, const float* b, const float* mean, const float* invstd, float slope,
              float* dw, float* db, int nthreads) {
    int nt = effective_threads(M, nthreads);
    std::vector<float> scale(C);
    for (int64_t c = 0; c < C; ++c)  // the forward's z = (x - mean) * scale + b, same float arithmetic
        scale[c] = static_cast<float>(w[c] * static_cast<double>(invstd[c]));
    const float* sc = scale.data();
    const float* mu = mean;
    // sums of dz and dz * (x - mean) per channel (dz: gradient at the batch norm's output)
    std::vector<double> sum_s, sum_q;
    channel_sums(
        M, C, nt, [&](int64_t i, float* s, float* q) { row_grad_sums(x + i * C, dy + i * C, sc, b, mu, slope, s, q, C); },
        sum_s, sum_q);
    std::vector<float> k1(C), k2(C), k3(C);
    for (int64_t c = 0; c < C; ++c) {
        double s = sum_s[c], q = sum_q[c];
        double is = invstd[c];
        db[c] = static_cast<float>(s);
        dw[c] = static_cast<float>(q * is);
        // dx = w*is * (dz - s/M - (x-mean) * is^2 * q/M) = k1*dz + k2*(x-mean) + k3
        double a = w[c] * is;
        double proj = q * is * is / M;
        k1[c] = static_cast<float>(a);
        k2[c] = static_cast<float>(-a * proj);  // times (x - mean)
        k3[c] = static_cast<float>(-a * s / M);
    }
    const float* __restrict p1 = k1.data();
    const float* __restrict p2 = k2.data();
    const float* __restrict p3 = k3.data();
    parallel_rows(M, nt, [&](int, int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i) row_grad_input(x + i * C, dy + i * C, dx + i * C, mu, sc, b, p1, p2, p3, slope,
                                                      C);
    });
}

}  // namespace

extern "C" {

// bf16 != 0: x, y are bf16 (uint16) buffers, else float. momentum < 0: running statistics left alone.
int semisup_bn_act_forward(const void* x, void* y, int bf16, int64_t M, int64_t C, const float* w, const float* b,
                           float eps, float slope, float momentum, float* running_mean, float* running_var,
                           float* save_mean, float* save_invstd, int nthreads) {
    if (bf16)
        forward(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), M, C, w, b, eps, slope, momentum,
                running_mean, running_var, save_mean, save_invstd, nthreads);
    else
        forward(static_cast<const float*>(x), static_cast<float*>(y), M, C, w, b, eps, slope, momentum,
                running_mean, running_var, save_mean, save_invstd, nthreads);
    return 0;
}

int semisup_bn_act_backward(const void* x, const void* dy, void* dx, int bf16, int64_t M, int64_t C, const float* w,
                            const float* b, const float* mean, const float* invstd, float slope, float* dw, float* db,
                            int nthreads) {
    if (bf16)
        backward(static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(dy), static_cast<uint16_t*>(dx), M, C,
                 w, b, mean, invstd, slope, dw, db, nthreads);
    else
        backward(static_cast<const float*>(x), static_cast<const float*>(dy), static_cast<float*>(dx), M, C, w, b,
                 mean, invstd, slope, dw, db, nthreads);
    return 0;
}
}
