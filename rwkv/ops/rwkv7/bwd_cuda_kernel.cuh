// RWKV-7 WKV backward as a CUDA kernel: the token recurrence run in reverse, one thread block per
// (batch, head). Math and layout: README.md beside this file, "CUDA backward".
//
// Per head the state S is [N, N] (rows i: key channels, columns j: value channels). The reverse
// step for token t, with G = dL/dS_t and u_t = S_{t-1}^T a_t (saved by the forward):
//
//   G      += (scale r_t) do_t^T
//   dr_t    = scale S_t do_t           dk_t = G v_t        db_t = G u_t
//   dv_t    = G^T k_t                  du_t = G^T b_t
//   dw_t    = rowsum(G * (e^{w_t} S_{t-1}))                da_t = S_{t-1} du_t
//   G_{t-1} = diag(e^{w_t}) G + a_t du_t^T
//
// Row quantities (dr, dk, db, dw, da) are sums along a row of S or G, column quantities (dv, du)
// along a column, so the block holds G twice: a "row thread" holds RR rows' pieces of S and G
// (RS threads share a row), a "column thread" CC columns' pieces of G (CS threads share a
// column). Each sum is local to a thread plus a shuffle across its RS (CS) lanes; du passes from
// column to row threads through shared memory, one barrier per token. A thread reads the token's
// vectors from shared memory four floats at a time and uses each for its RR rows (CC columns),
// which cut its time by 30% against one float and one row or column per thread; on an H200 it
// is limited by instruction issue (docs/kernels.md, "CUDA backward for RWKV-7").
//
// S_{t-1} comes from S_t by undoing the step, e^{w_t} S_{t-1} = S_t - b_t u_t^T - k_t v_t^T,
// over at most 7 tokens: the forward saved S at every 16th token (its chunk starts) and the row
// threads recompute the state after the chunk's 8th token from them, so every half chunk starts
// and ends on an exact state. Undoing multiplies rounding errors by e^{-w} per token; a row whose
// half chunk decays by more than e^{-REVERSE_LIMIT} is instead recomputed forward from the half's
// start state at every token (exact, slower; the RWKV-7 model's w >= -0.61 never needs it).

#pragma once

#include <cuda_bf16.h>

namespace skein_rwkv7 {

constexpr int CHUNK = 16;  // tokens between the forward's saved states
constexpr int HALF = CHUNK / 2;
constexpr float REVERSE_LIMIT = 8.0f;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename F> __device__ __forceinline__ F from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

template <int LANES>
__device__ __forceinline__ float lane_sum(float x) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ void load4(float (&x)[4], const float* p) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  x[0] = f.x, x[1] = f.y, x[2] = f.z, x[3] = f.w;
}

// Shared-memory layout, in floats. Per token of the chunk: the K-side vectors (scaled r, e^w,
// e^-w, k, a, b), read in pieces of HC by column threads, and the V-side vectors (do, v, u),
// read in pieces of HR by row threads; each piece starts 4 floats after the previous one ends,
// so the pieces a warp reads at once are 16-byte aligned and fall in distinct banks.
template <int N, int RS, int RR, int CS, int CC>
struct Layout {
  static constexpr int HR = N / RS;             // columns per row thread
  static constexpr int HC = N / CS;             // rows per column thread
  static constexpr int ROW_THREADS = RS * N / RR;
  static constexpr int THREADS = ROW_THREADS + CS * N / CC;
  static constexpr int MIN_BLOCKS = THREADS <= 256 ? 2 : 1;  // resident blocks per SM to plan registers for
  static constexpr int PK = N + 4 * CS;
  static constexpr int PV = N + 4 * RS;
  static constexpr int R = 0, EW = R + CHUNK * PK, EI = EW + CHUNK * PK, K = EI + CHUNK * PK,
                       A = K + CHUNK * PK, B = A + CHUNK * PK, DO = B + CHUNK * PK, V = DO + CHUNK * PV,
                       U = V + CHUNK * PV, DU = U + CHUNK * PV, MID = DU + 2 * PV,
                       TOTAL = MID + RR * HR * ROW_THREADS;
  static_assert(HR % 4 == 0 && HC % 4 == 0 && 32 % RS == 0 && 32 % CS == 0, "pieces of whole float4s");
  static_assert(ROW_THREADS % 32 == 0, "row and column threads in separate warps");
  __device__ static __forceinline__ int pk(int i) { return i + i / HC * 4; }
  __device__ static __forceinline__ int pv(int j) { return j + j / HR * 4; }
};

// One forward step of a row thread's pieces: S = e^w S + b u^T + k v^T for token s.
template <int N, int RS, int RR, int CS, int CC, int HR = N / RS>
__device__ __forceinline__ void row_forward(float (&S)[RR][HR], const float* sm, int s, int i_base, int j0) {
  using L = Layout<N, RS, RR, CS, CC>;
  float ew[RR], bi[RR], ki[RR];
#pragma unroll
  for (int rr = 0; rr < RR; rr++) {
    const int c = s * L::PK + L::pk(i_base + rr);
    ew[rr] = sm[L::EW + c], bi[rr] = sm[L::B + c], ki[rr] = sm[L::K + c];
  }
#pragma unroll
  for (int e = 0; e < HR; e += 4) {
    float u4[4], v4[4];
    load4(u4, sm + L::U + s * L::PV + L::pv(j0) + e);
    load4(v4, sm + L::V + s * L::PV + L::pv(j0) + e);
#pragma unroll
    for (int rr = 0; rr < RR; rr++)
#pragma unroll
      for (int x = 0; x < 4; x++) S[rr][e + x] = ew[rr] * S[rr][e + x] + bi[rr] * u4[x] + ki[rr] * v4[x];
  }
}

template <typename F, int N, int RS, int RR, int CS, int CC>
__global__ void __launch_bounds__(Layout<N, RS, RR, CS, CC>::THREADS, Layout<N, RS, RR, CS, CC>::MIN_BLOCKS)
    rwkv7_bwd_kernel(const F* __restrict__ r, const F* __restrict__ w, const F* __restrict__ k,
                     const F* __restrict__ v, const F* __restrict__ a, const F* __restrict__ b,
                     const F* __restrict__ dout, const float* __restrict__ u, const float* __restrict__ states,
                     const float* __restrict__ sT, const float* __restrict__ dsT, F* __restrict__ dr,
                     F* __restrict__ dw, F* __restrict__ dk, F* __restrict__ dv, F* __restrict__ da,
                     F* __restrict__ db, float* __restrict__ ds0, int L_, int H, float scale) {
  using L = Layout<N, RS, RR, CS, CC>;
  constexpr int HR = L::HR, HC = L::HC;
  extern __shared__ __align__(16) float sm[];
  const int tid = threadIdx.x;
  const int bh = blockIdx.x;
  const int bb = bh / H, h = bh % H;
  const int NC = (L_ + CHUNK - 1) / CHUNK;
  const bool is_row = tid < L::ROW_THREADS;
  // row thread: rows [i_base, i_base + RR), columns [j0, j0 + HR);
  // column thread: columns [j_base, j_base + CC), rows [i0, i0 + HC)
  const int p = tid % RS, i_base = tid / RS * RR, j0 = p * HR;
  const int ct = tid - L::ROW_THREADS, q = ct % CS, j_base = ct / CS * CC, i0 = q * HC;
  const long head = (long)bh * N * N;

  float S[RR][HR], G[RR][HR], Gc[CC][HC];
  if (is_row) {
#pragma unroll
    for (int rr = 0; rr < RR; rr++)
#pragma unroll
      for (int e = 0; e < HR; e++) G[rr][e] = dsT ? dsT[head + (long)(i_base + rr) * N + j0 + e] : 0.f;
  } else {
#pragma unroll
    for (int cc = 0; cc < CC; cc++)
#pragma unroll
      for (int e = 0; e < HC; e++) Gc[cc][e] = dsT ? dsT[head + (long)(i0 + e) * N + j_base + cc] : 0.f;
  }

  for (int n = NC - 1; n >= 0; n--) {
    const int t0 = n * CHUNK;
    const int len = min(CHUNK, L_ - t0);
    __syncthreads();  // every thread is done with the previous chunk's vectors
    for (int idx = tid; idx < CHUNK * N; idx += L::THREADS) {
      const int s = idx / N, c = idx % N;
      const long g = (((long)bb * L_ + t0 + s) * H + h) * N + c;
      const bool in = s < len;
      const float wv = in ? to_f(w[g]) : 0.f;
      const int ck = s * L::PK + L::pk(c), cv = s * L::PV + L::pv(c);
      sm[L::R + ck] = in ? scale * to_f(r[g]) : 0.f;
      sm[L::EW + ck] = expf(wv);
      sm[L::EI + ck] = expf(-wv);
      sm[L::K + ck] = in ? to_f(k[g]) : 0.f;
      sm[L::A + ck] = in ? to_f(a[g]) : 0.f;
      sm[L::B + ck] = in ? to_f(b[g]) : 0.f;
      sm[L::DO + cv] = in ? to_f(dout[g]) : 0.f;
      sm[L::V + cv] = in ? to_f(v[g]) : 0.f;
      sm[L::U + cv] = in ? u[g] : 0.f;
    }
    __syncthreads();
    const float* start = states + ((long)bh * NC + n) * N * N;  // S before the chunk
    float* mid = sm + L::MID + tid;  // this row thread's pieces of S after token HALF - 1
    if (is_row) {
      if (len > HALF) {
#pragma unroll
        for (int rr = 0; rr < RR; rr++)
#pragma unroll
          for (int e = 0; e < HR; e++) S[rr][e] = start[(long)(i_base + rr) * N + j0 + e];
        for (int s = 0; s < HALF; s++) row_forward<N, RS, RR, CS, CC>(S, sm, s, i_base, j0);
#pragma unroll
        for (int rr = 0; rr < RR; rr++)
#pragma unroll
          for (int e = 0; e < HR; e++) mid[(rr * HR + e) * L::ROW_THREADS] = S[rr][e];
      }
      const float* end = n == NC - 1 ? sT + head : states + ((long)bh * NC + n + 1) * N * N;
#pragma unroll
      for (int rr = 0; rr < RR; rr++)
#pragma unroll
        for (int e = 0; e < HR; e++) S[rr][e] = end[(long)(i_base + rr) * N + j0 + e];
    }
    bool exact = false;  // some row of this thread recomputes its half chunk forward
    for (int s = len - 1; s >= 0; s--) {
      const int t = t0 + s;
      const int first = s >= HALF ? HALF : 0;  // the half chunk's first token
      const int ks = s * L::PK, vs = s * L::PV;
      float* du_s = sm + L::DU + (t & 1) * L::PV;
      const long g = (((long)bb * L_ + t) * H + h) * N;
      if (is_row) {
        if (s == len - 1 || s == HALF - 1) {
          exact = false;
#pragma unroll
          for (int rr = 0; rr < RR; rr++) {
            float decay = 1.f;
            for (int x = first + 1; x <= s; x++) decay *= sm[L::EI + x * L::PK + L::pk(i_base + rr)];
            exact |= decay > expf(REVERSE_LIMIT);
          }
        }
        const bool undo = !exact && s != first;
        float ri[RR], ki[RR], bi[RR], ei[RR], ew[RR];
        float sdr[RR] = {}, sdk[RR] = {}, sdb[RR] = {}, sdw[RR] = {};
#pragma unroll
        for (int rr = 0; rr < RR; rr++) {
          const int c = ks + L::pk(i_base + rr);
          ri[rr] = sm[L::R + c], ki[rr] = sm[L::K + c], bi[rr] = sm[L::B + c], ei[rr] = sm[L::EI + c];
          ew[rr] = sm[L::EW + c];
        }
#pragma unroll
        for (int e = 0; e < HR; e += 4) {
          float do4[4], v4[4], u4[4];
          load4(do4, sm + L::DO + vs + L::pv(j0) + e);
          load4(v4, sm + L::V + vs + L::pv(j0) + e);
          load4(u4, sm + L::U + vs + L::pv(j0) + e);
#pragma unroll
          for (int rr = 0; rr < RR; rr++)
#pragma unroll
            for (int x = 0; x < 4; x++) {
              float& Se = S[rr][e + x];
              float& Ge = G[rr][e + x];
              sdr[rr] += Se * do4[x];
              Ge += ri[rr] * do4[x];
              sdk[rr] += Ge * v4[x];
              sdb[rr] += Ge * u4[x];
              if (undo) {  // e^{w} S_{t-1} = S_t - b u^T - k v^T
                const float y = Se - bi[rr] * u4[x] - ki[rr] * v4[x];
                sdw[rr] += Ge * y;
                Se = y * ei[rr];
              }
            }
        }
        if (!undo) {  // S_{t-1} exactly: the half chunk's start state, run forward to token s - 1
          if (first == 0) {
#pragma unroll
            for (int rr = 0; rr < RR; rr++)
#pragma unroll
              for (int e = 0; e < HR; e++) S[rr][e] = start[(long)(i_base + rr) * N + j0 + e];
          } else {
#pragma unroll
            for (int rr = 0; rr < RR; rr++)
#pragma unroll
              for (int e = 0; e < HR; e++) S[rr][e] = mid[(rr * HR + e) * L::ROW_THREADS];
          }
          for (int x = first; x < s; x++) row_forward<N, RS, RR, CS, CC>(S, sm, x, i_base, j0);
#pragma unroll
          for (int rr = 0; rr < RR; rr++)
#pragma unroll
            for (int e = 0; e < HR; e++) sdw[rr] += G[rr][e] * (ew[rr] * S[rr][e]);
        }
#pragma unroll
        for (int rr = 0; rr < RR; rr++) {
          sdr[rr] = lane_sum<RS>(sdr[rr]);
          sdk[rr] = lane_sum<RS>(sdk[rr]);
          sdb[rr] = lane_sum<RS>(sdb[rr]);
          sdw[rr] = lane_sum<RS>(sdw[rr]);
        }
        if (p == 0) {
#pragma unroll
          for (int rr = 0; rr < RR; rr++) {
            dr[g + i_base + rr] = from_f<F>(scale * sdr[rr]);
            dk[g + i_base + rr] = from_f<F>(sdk[rr]);
            db[g + i_base + rr] = from_f<F>(sdb[rr]);
            dw[g + i_base + rr] = from_f<F>(sdw[rr]);
          }
        }
      } else {
        float doj[CC], sdv[CC] = {}, sdu[CC] = {};
#pragma unroll
        for (int cc = 0; cc < CC; cc++) doj[cc] = sm[L::DO + vs + L::pv(j_base + cc)];
#pragma unroll
        for (int e = 0; e < HC; e += 4) {
          float r4[4], k4[4], b4[4];
          load4(r4, sm + L::R + ks + L::pk(i0) + e);
          load4(k4, sm + L::K + ks + L::pk(i0) + e);
          load4(b4, sm + L::B + ks + L::pk(i0) + e);
#pragma unroll
          for (int cc = 0; cc < CC; cc++)
#pragma unroll
            for (int x = 0; x < 4; x++) {
              float& Ge = Gc[cc][e + x];
              Ge += r4[x] * doj[cc];
              sdv[cc] += Ge * k4[x];
              sdu[cc] += Ge * b4[x];
            }
        }
#pragma unroll
        for (int cc = 0; cc < CC; cc++) {
          sdv[cc] = lane_sum<CS>(sdv[cc]);
          sdu[cc] = lane_sum<CS>(sdu[cc]);
        }
        if (q == 0) {
#pragma unroll
          for (int cc = 0; cc < CC; cc++) {
            du_s[L::pv(j_base + cc)] = sdu[cc];
            dv[g + j_base + cc] = from_f<F>(sdv[cc]);
          }
        }
#pragma unroll
        for (int e = 0; e < HC; e += 4) {
          float ew4[4], a4[4];
          load4(ew4, sm + L::EW + ks + L::pk(i0) + e);
          load4(a4, sm + L::A + ks + L::pk(i0) + e);
#pragma unroll
          for (int cc = 0; cc < CC; cc++)
#pragma unroll
            for (int x = 0; x < 4; x++) Gc[cc][e + x] = ew4[x] * Gc[cc][e + x] + a4[x] * sdu[cc];
        }
      }
      __syncthreads();  // du_t is complete
      if (is_row) {
        float ai[RR], ew[RR], sda[RR] = {};
#pragma unroll
        for (int rr = 0; rr < RR; rr++) {
          const int c = ks + L::pk(i_base + rr);
          ai[rr] = sm[L::A + c], ew[rr] = sm[L::EW + c];
        }
#pragma unroll
        for (int e = 0; e < HR; e += 4) {
          float du4[4];
          load4(du4, du_s + L::pv(j0) + e);
#pragma unroll
          for (int rr = 0; rr < RR; rr++)
#pragma unroll
            for (int x = 0; x < 4; x++) {
              sda[rr] += S[rr][e + x] * du4[x];
              G[rr][e + x] = ew[rr] * G[rr][e + x] + ai[rr] * du4[x];
            }
        }
#pragma unroll
        for (int rr = 0; rr < RR; rr++) sda[rr] = lane_sum<RS>(sda[rr]);
        if (p == 0) {
#pragma unroll
          for (int rr = 0; rr < RR; rr++) da[g + i_base + rr] = from_f<F>(sda[rr]);
        }
      }
    }
  }
  if (ds0 && is_row) {
#pragma unroll
    for (int rr = 0; rr < RR; rr++)
#pragma unroll
      for (int e = 0; e < HR; e++) ds0[head + (long)(i_base + rr) * N + j0 + e] = G[rr][e];
  }
}

}  // namespace skein_rwkv7
