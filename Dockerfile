# fhirlake: one static binary on a distroless base. Build from the repository root:
#   docker build -t REGION-docker.pkg.dev/PROJECT/fhirlake/fhirlake .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/fhirlake ./cmd/fhirlake

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/fhirlake /fhirlake
USER nonroot:nonroot
ENTRYPOINT ["/fhirlake"]
CMD ["worker"]
